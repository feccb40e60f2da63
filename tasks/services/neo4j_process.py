"""The process backend: a Neo4j 5.26 Community server as one local JVM.

No Docker engine here, so the server runs straight from the Maven jar cache
(``tasks.services.provision``): ``java ... org.neo4j.server.CommunityEntryPoint``
with the flags the 5.x bootloader would add (``neo4j_launch``). Skipping the
bootloader gives one process, one PID, one process group.

Each start gets a fresh home (conf, data, logs) under ``run_dir`` and free
Bolt/HTTP ports, so concurrent runs never share state. The configured
password is set like the neo4j image does it: ``neo4j-admin dbms
set-initial-password`` against the same home before the first start. A pid
file lets ``neo4j_reaping`` kill the server if its flow crashes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cicd import command
from cicd.errors import InfrastructureError
from tasks.services import provision
from tasks.services.base import LOG_TAIL_LINES, ServiceEndpoint, logger
from tasks.services.host import free_ports, process_start_time, tail_lines
from tasks.services.neo4j_health import check_user, wait_until_healthy
from tasks.services.neo4j_launch import (
    CONSOLE_LOG,
    HOST,
    ProcessSettings,
    admin_env,
    cds_archive,
    cds_flags,
    java_binary,
    make_home,
    publish_cds,
    remove_home,
    render_conf,
    server_argv,
    set_initial_password,
)
from tasks.services.neo4j_reaping import PidRecord, pid_file, reap_orphans, write_record

if TYPE_CHECKING:
    from cicd.config import ServiceConfig

STOP_GRACE_SECONDS = 30.0
FAILED_START_GRACE_SECONDS = 5.0
# After the group is gone, the leader's exit status is already there to read.
WAIT_AFTER_KILL_SECONDS = 10.0


class Neo4jProcess:
    """A started server (a :class:`~tasks.services.base.RunningService`)."""

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
            # terminate_group waits until the group is empty, and the JVM is
            # our child: once it exits it stays in the group as a zombie until
            # it is reaped. Reap it meanwhile, so the wait ends when the JVM does.
            reaper = threading.Thread(
                target=self._proc.wait, name=f"reap-neo4j-{self.pid}", daemon=True
            )
            reaper.start()
            command.terminate_group(self.pgid, grace=grace)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=WAIT_AFTER_KILL_SECONDS)
            if self._proc.returncode == -signal.SIGKILL:
                logger.warning("%s: no exit %.0fs after SIGTERM; killed", self.endpoint.name, grace)
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
        return not self.unavailable_reason()

    def unavailable_reason(self) -> str:
        try:
            java_binary()
        except InfrastructureError as exc:
            return str(exc)
        version = provision.DEFAULT_NEO4J_VERSION
        if not self.provision_missing and not provision.is_provisioned(version):
            return f"Neo4j {version} is not provisioned; run scripts/provision-neo4j"
        return ""

    def reap_orphans(self) -> list[str]:
        return [str(pid) for pid in reap_orphans()]

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
        make_home(home, token)
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
            endpoint, proc, home, pid_file(token), run_dir / f"{token}.log", cds_dump
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
            server.stop(grace=FAILED_START_GRACE_SECONDS)
            raise
        logger.info(
            "%s: Neo4j healthy on %s after %.1fs (pid %d)", name, endpoint.uri, waited, proc.pid
        )
        return server
