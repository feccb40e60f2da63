"""The process backend: a Neo4j 5.26 Community server as one local JVM.

No Docker engine here, so the server runs straight from the Maven jar cache
(``tasks.services.provision``): ``java ... org.neo4j.server.CommunityEntryPoint``
with the flags the 5.x bootloader would add (shared notes, neo4j.md 1.3).
Skipping the bootloader gives one process, one PID, one process group.

Each start gets a fresh home (conf, data, logs) under ``run_dir`` and free
Bolt/HTTP ports, so concurrent runs never share state. The configured
password is set like the neo4j image does it: ``neo4j-admin dbms
set-initial-password`` (``org.neo4j.cli.AdminTool``) against the same home
before the first start.

A pid file under ``cicd.paths.services()/run`` records the server, the
process that owns it and a marker on the server's command line, so
``reap_orphans`` can kill servers whose flow crashed without ever killing an
unrelated program that reused the PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cicd import command, paths
from cicd.errors import InfrastructureError
from tasks.services import provision
from tasks.services.base import (
    LOG_TAIL_LINES,
    ServiceEndpoint,
    check_user,
    free_ports,
    logger,
    tail_lines,
    wait_until_healthy,
)

if TYPE_CHECKING:
    from cicd.config import ServiceConfig

HOST = "127.0.0.1"
ENTRY_POINT = "org.neo4j.server.CommunityEntryPoint"
ADMIN_TOOL = "org.neo4j.cli.AdminTool"
# A system property that only our servers carry; reaping requires it in
# /proc/<pid>/cmdline, so a recycled PID is never mistaken for a server.
MARKER_PROPERTY = "-Dcicd-flows.service="
# Written into each home so a corrupt pid file can never make us delete
# a directory we did not create.
HOME_MARKER = ".cicd-flows-service"
CONSOLE_LOG = "console.log"
STOP_GRACE_SECONDS = 30.0
REAP_GRACE_SECONDS = 5.0
ADMIN_TIMEOUT_SECONDS = 120.0

# JVM flags from the 5.x distribution's server.jvm.additional defaults, minus
# -XX:+AlwaysPreTouch (it touches the whole heap up front: slower start).
JVM_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:-OmitStackTraceInFastThrow",
    "-XX:+UnlockExperimentalVMOptions",
    "-XX:+TrustFinalNonStaticFields",
    "-XX:+DisableExplicitGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djdk.nio.maxCachedBufferSize=1024",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dlog4j2.disable.jmx=true",
    "-Dfile.encoding=UTF-8",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
)


@dataclass(frozen=True)
class ProcessSettings:
    """Memory and extra neo4j.conf lines; the defaults fit a 2-core CI worker."""

    heap_initial: str = "256m"
    heap_max: str = "512m"
    page_cache: str = "64m"
    transaction_memory: str = "256m"
    extra_conf: Mapping[str, str] = field(default_factory=dict)
    extra_jvm: tuple[str, ...] = ()
    # Reuse a dynamic class-data-sharing archive of the server's classes
    # (measured: start to healthy ~25-35% faster; see bench/README.md).
    class_data_sharing: bool = True


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise InfrastructureError("the Neo4j process backend needs Java 17+: no `java` on PATH")
    return found


def render_conf(
    home: Path, lib: Path, bolt_port: int, http_port: int, settings: ProcessSettings
) -> str:
    """neo4j.conf for one run: loopback only, per-run directories, small memory."""
    values = {
        "server.default_listen_address": HOST,
        "server.default_advertised_address": HOST,
        "server.bolt.enabled": "true",
        "server.bolt.listen_address": f"{HOST}:{bolt_port}",
        # Advertised = listen: neo4j:// routing URIs would otherwise hand out 7687.
        "server.bolt.advertised_address": f"{HOST}:{bolt_port}",
        "server.http.enabled": "true",
        "server.http.listen_address": f"{HOST}:{http_port}",
        "server.http.advertised_address": f"{HOST}:{http_port}",
        "server.https.enabled": "false",
        "dbms.security.auth_enabled": "true",
        "server.directories.data": str(home / "data"),
        "server.directories.logs": str(home / "logs"),
        "server.directories.run": str(home / "run"),
        "server.directories.import": str(home / "import"),
        "server.directories.plugins": str(home / "plugins"),
        "server.directories.lib": str(lib),
        # The default page cache is "50% of RAM minus heap": gigabytes on a CI box.
        "server.memory.pagecache.size": settings.page_cache,
        "dbms.memory.transaction.total.max": settings.transaction_memory,
        "dbms.usage_report.enabled": "false",
        # Netty's graceful shutdown waits 2 x 5 s on the Bolt event loops by
        # default (measured: SIGTERM to exit 11.7 s -> 2.3 s with these).
        "internal.dbms.bolt.netty_server_shutdown_quiet_period": "0",
        "internal.dbms.bolt.netty_server_shutdown_timeout": "2s",
    }
    values.update(settings.extra_conf)
    return "".join(f"{key}={value}\n" for key, value in values.items())


def server_argv(
    java: str,
    home: Path,
    lib: Path,
    token: str,
    settings: ProcessSettings,
    cds: Sequence[str] = (),
) -> list[str]:
    return [
        java,
        f"-Xms{settings.heap_initial}",
        f"-Xmx{settings.heap_max}",
        *JVM_FLAGS,
        *cds,
        *settings.extra_jvm,
        f"{MARKER_PROPERTY}{token}",
        "-cp",
        f"{home / 'plugins'}/*:{lib}/*",
        ENTRY_POINT,
        f"--home-dir={home}",
        f"--config-dir={home / 'conf'}",
        "--console-mode",
    ]


def admin_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["NEO4J_HOME"] = str(home)
    env["NEO4J_CONF"] = str(home / "conf")
    # Only the bootloader honours JAVA_OPTS; keep it from surprising the admin tool.
    env.pop("JAVA_OPTS", None)
    return env


def set_initial_password(java: str, home: Path, lib: Path, password: str) -> None:
    """What the neo4j image does for NEO4J_AUTH: must run before the first start."""
    result = command.run(
        [java, "-Xmx128m", "-cp", f"{lib}/*", ADMIN_TOOL, "dbms", "set-initial-password", password],
        cwd=home,
        env=admin_env(home),
        timeout=ADMIN_TIMEOUT_SECONDS,
    )
    if not result.ok:
        # The output names the conf problem (the password is not in it); the
        # Java stack frames around it only bury the message.
        lines = [
            line for line in result.output.splitlines()
            if not line.lstrip().startswith(("at ", "... "))
        ]
        raise InfrastructureError(
            f"neo4j-admin dbms set-initial-password failed (exit {result.returncode}"
            f"{', timed out' if result.timed_out else ''}):\n" + "\n".join(lines[-20:])
        )


# --- class-data sharing -------------------------------------------------------
#
# Loading and verifying ~20k classes from 213 jars is a large part of every
# start. The first server on a machine dumps the classes it loaded into a
# dynamic CDS archive at exit (-XX:ArchiveClassesAtExit); later servers map it
# (-XX:SharedArchiveFile). A stale or foreign archive is harmless: the JVM's
# default -Xshare:auto just runs without it.

CDS_DIR = "cds"
STALE_DUMP_SECONDS = 3600.0


def cds_archive(java: str, lib: Path) -> Path:
    """The archive for this JVM build and jar set, beside the jar cache."""
    binary = Path(java).resolve()
    stat = binary.stat()
    key = hashlib.sha256(f"{binary}:{stat.st_size}:{stat.st_mtime_ns}:{lib}".encode()).hexdigest()
    return lib.parent / CDS_DIR / f"neo4j-{key[:16]}.jsa"


def cds_flags(archive: Path, token: str) -> tuple[list[str], Path | None]:
    """JVM flags to use ``archive``, or to dump one; plus the pending dump path."""
    if archive.is_file():
        return [f"-XX:SharedArchiveFile={archive}"], None
    archive.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for stale in archive.parent.glob("tmp-*.jsa"):
        # Dumps of servers that were killed; a live dump is minutes old at most.
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > STALE_DUMP_SECONDS:
                stale.unlink()
    # Each dumping server writes its own file; the first clean exit publishes it.
    pending = archive.parent / f"tmp-{token}.jsa"
    return [f"-XX:ArchiveClassesAtExit={pending}"], pending


def publish_cds(pending: Path, archive: Path, clean_exit: bool) -> None:
    if clean_exit and pending.is_file() and pending.stat().st_size > 0:
        os.replace(pending, archive)  # atomic: readers never map half a file
        logger.info("saved the Neo4j class-data archive %s", archive)
    else:
        pending.unlink(missing_ok=True)


# --- process identity (shared with reaping) ---------------------------------


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; ``None`` if gone or a zombie.

    PID + start time identifies a process for its whole life: a reused PID
    has a different start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_alive(pid: int, start_time: int | None) -> bool:
    current = process_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


@dataclass(frozen=True)
class PidRecord:
    """The pid file of one server: who it is and who started it."""

    token: str
    name: str
    pid: int
    start_time: int | None
    home: str
    owner_pid: int
    owner_start_time: int | None

    def owner_alive(self) -> bool:
        return is_alive(self.owner_pid, self.owner_start_time)

    def server_is_ours(self) -> bool:
        """The PID is still the server we started (same start time and marker)."""
        if not is_alive(self.pid, self.start_time):
            return False
        return f"{MARKER_PROPERTY}{self.token}" in process_cmdline(self.pid)


def pid_dir() -> Path:
    path = paths.services() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_record(record: PidRecord) -> Path:
    target = pid_dir() / f"{record.token}.json"
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(asdict(record)))
    partial.replace(target)  # atomic: a reaper never reads half a record
    return target


def read_record(path: Path) -> PidRecord:
    data = json.loads(path.read_text())
    return PidRecord(**data)


def remove_home(home: Path) -> None:
    """Delete a server home, but only one we created (it carries our marker)."""
    if (home / HOME_MARKER).is_file():
        shutil.rmtree(home, ignore_errors=True)


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_server(pid: int, start_time: int | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace``, a server we did not start in this process.

    Its whole group when it leads one (it was started with a new session),
    else just the PID.
    """
    try:
        leads_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if leads_group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and is_alive(pid, start_time):
        time.sleep(0.05)
    if is_alive(pid, start_time):
        send(signal.SIGKILL)


# --- the backend ------------------------------------------------------------


class Neo4jProcess:
    """A started server (a :class:`RunningService`)."""

    def __init__(
        self,
        endpoint: ServiceEndpoint,
        proc: subprocess.Popen[bytes],
        home: Path,
        pid_file: Path,
        keep_log: Path | None,
        cds_dump: tuple[Path, Path] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._proc = proc
        self.home = home
        self.pid_file = pid_file
        self._keep_log = keep_log
        # (pending dump, final archive) when this server writes the CDS archive.
        self._cds_dump = cds_dump
        self._stopped = False

    @property
    def endpoint(self) -> ServiceEndpoint:
        return self._endpoint

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def pgid(self) -> int:
        # start_new_session=True: the server leads its own group.
        return self._proc.pid

    @property
    def ident(self) -> str:
        return str(self._proc.pid)

    def exit_reason(self) -> str | None:
        code = self._proc.poll()
        if code is None:
            return None
        return f"JVM exited with code {code}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        console = tail_lines(self.home / CONSOLE_LOG, lines)
        if console:
            return console
        return tail_lines(self.home / "logs" / "debug.log", lines)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the group (Neo4j shuts down cleanly on it), SIGKILL after
        ``grace``; then remove the pid file and the home. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if signal_group(self.pgid, signal.SIGTERM):
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline:
                    # poll() reaps the leader; killpg(0) then fails once the
                    # whole group is gone (a zombie leader would still count).
                    self._proc.poll()
                    if not signal_group(self.pgid, 0):
                        break
                    time.sleep(0.05)
                else:
                    logger.warning(
                        "%s: no exit %.0fs after SIGTERM; killing", self.endpoint.name, grace
                    )
                    signal_group(self.pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        finally:
            if self._cds_dump is not None:
                publish_cds(*self._cds_dump, clean_exit=self._proc.returncode == 0)
            command.unregister_group(self.pgid)
            self.pid_file.unlink(missing_ok=True)
            if self._keep_log is not None:
                with contextlib.suppress(OSError):
                    shutil.copyfile(self.home / CONSOLE_LOG, self._keep_log)
            remove_home(self.home)


class Neo4jProcessBackend:
    """Start Neo4j as a local JVM from the Maven jar cache."""

    name = "process"

    def __init__(
        self, settings: ProcessSettings | None = None, *, provision_missing: bool = True
    ) -> None:
        self.settings = settings or ProcessSettings()
        # Fetch the jars on first use (Maven, minutes) unless the caller
        # wants a missing cache to be an error instead.
        self.provision_missing = provision_missing

    def available(self) -> bool:
        try:
            java_binary()
        except InfrastructureError:
            return False
        return self.provision_missing or provision.is_provisioned(provision.DEFAULT_NEO4J_VERSION)

    def _lib(self, config: ServiceConfig) -> Path:
        version = provision.distribution_version(config.version)
        if provision.is_provisioned(version):
            return provision.lib_dir(version)
        if not self.provision_missing:
            raise InfrastructureError(
                f"Neo4j {version} is not provisioned ({provision.lib_dir(version)} is missing); "
                "run scripts/provision-neo4j"
            )
        logger.info("Neo4j %s jars missing; fetching them with Maven", version)
        return provision.ensure_neo4j(version)

    def start(self, name: str, config: ServiceConfig, run_dir: Path) -> Neo4jProcess:
        check_user(name, config)
        java = java_binary()
        lib = self._lib(config)
        token = f"{name}-{secrets.token_hex(4)}"
        home = run_dir / token
        (home / "conf").mkdir(parents=True)
        (home / HOME_MARKER).write_text(token)
        for sub in ("data", "logs", "run", "import", "plugins"):
            (home / sub).mkdir()
        bolt_port, http_port = free_ports(2, HOST)
        (home / "conf" / "neo4j.conf").write_text(
            render_conf(home, lib, bolt_port, http_port, self.settings)
        )
        endpoint = ServiceEndpoint(
            name=name, host=HOST, port=bolt_port, http_port=http_port,
            user=config.user, password=config.password,
        )
        try:
            set_initial_password(java, home, lib, config.password)
        except BaseException:
            remove_home(home)
            raise

        cds: list[str] = []
        cds_dump: tuple[Path, Path] | None = None
        if self.settings.class_data_sharing:
            archive = cds_archive(java, lib)
            cds, pending = cds_flags(archive, token)
            cds_dump = None if pending is None else (pending, archive)
        argv = server_argv(java, home, lib, token, self.settings, cds)
        with (home / CONSOLE_LOG).open("wb") as console:
            proc = subprocess.Popen(
                argv,
                cwd=home,
                env=admin_env(home),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                # Own group: stop() and reaping kill exactly this server, and
                # a kill of the flow's group does not take it down mid-test.
                start_new_session=True,
            )
        # kill_all() (flow finally / atexit) then stops it too.
        command.register_group(proc.pid)
        record = PidRecord(
            token=token, name=name, pid=proc.pid, start_time=process_start_time(proc.pid),
            home=str(home), owner_pid=os.getpid(), owner_start_time=process_start_time(os.getpid()),
        )
        server = Neo4jProcess(
            endpoint, proc, home, pid_dir() / f"{token}.json", run_dir / f"{token}.log", cds_dump
        )
        try:
            write_record(record)
            waited = wait_until_healthy(
                endpoint,
                timeout=config.startup_timeout,
                exited=server.exit_reason,
                log_tail=server.log_tail,
            )
        except BaseException:
            # Failed, timed out, or cancelled mid-start: leave nothing behind.
            server.stop(grace=5.0)
            raise
        logger.info(
            "%s: Neo4j healthy on %s after %.1fs (pid %d)", name, endpoint.uri, waited, proc.pid
        )
        return server


def reap_orphans() -> list[int]:
    """Kill servers whose owning process is gone; return the PIDs killed.

    A pid file is only acted on when its owner (a flow process) is dead; its
    server is only killed when the PID still has the recorded start time and
    our marker on its command line. Stale files are removed either way.
    """
    killed: list[int] = []
    for path in sorted(pid_dir().glob("*.json")):
        try:
            record = read_record(path)
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("removing unreadable service pid file %s: %s", path, exc)
            path.unlink(missing_ok=True)
            continue
        if record.owner_alive():
            continue  # a live flow (maybe this one) is using it
        if record.server_is_ours():
            logger.warning("killing orphaned Neo4j server %s (pid %d)", record.token, record.pid)
            kill_server(record.pid, record.start_time, REAP_GRACE_SECONDS)
            killed.append(record.pid)
        path.unlink(missing_ok=True)
        remove_home(Path(record.home))
    return killed
