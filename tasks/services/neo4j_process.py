"""The process backend: a Neo4j 5.26 Community server as one local JVM.

No Docker engine here, so the server runs straight from the Maven jar cache
(``tasks.services.provision``): ``java ... org.neo4j.server.CommunityEntryPoint``
with the flags the 5.x bootloader would add (``neo4j_launch``). Skipping the
bootloader gives one process, one PID, one process group.

Each start gets a fresh home (conf, data, logs) under ``run_dir`` and free
Bolt/HTTP ports, so concurrent runs never share state; a fixed ``port`` /
``http_port`` is checked free before any JVM starts (``slots.service_slots``
makes runs that want the same port take turns). Plugins are symlinked from
their cache into the home's ``plugins`` directory. The configured
password is set like the neo4j image does it: ``neo4j-admin dbms
set-initial-password`` against the same home before the first start. A pid
claim (``neo4j_reaping``, an flock held while the server runs) lets any later
command reap the server once its flow is provably dead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from cicd import command
from cicd.config import ServiceConfig
from cicd.errors import InfrastructureError
from cicd.locking import try_file_lock
from cicd.ownership import Claim
from tasks.services import provision
from tasks.services.base import LOG_TAIL_LINES, ServiceEndpoint, logger
from tasks.services.host import check_ports_free, free_ports, tail_lines
from tasks.services.neo4j_health import check_user, wait_until_healthy, warm_up
from tasks.services.neo4j_launch import (
    CDS_LOCK,
    CONSOLE_LOG,
    HOST,
    ProcessSettings,
    admin_env,
    cds_archive,
    cds_flags,
    java_binary,
    make_home,
    pending_dump,
    publish_cds,
    remove_home,
    render_conf,
    server_argv,
    set_initial_password,
)
from tasks.services.neo4j_reaping import claim_server, reap_orphans

# A backstop: a server stops in ~1-3 s once it never dumps class data at exit.
STOP_GRACE_SECONDS = 30.0
# The one server that writes the class-data archive may take this long to dump it.
CDS_DUMP_GRACE_SECONDS = 600.0
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
        claim: Claim | None,
        keep_log: Path | None,
    ) -> None:
        self._endpoint = endpoint
        self._proc = proc
        self.home = home
        self.claim = claim
        self._keep_log = keep_log
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

    @property
    def returncode(self) -> int | None:
        """The JVM's exit status once it ended: 0 after a clean SIGTERM stop,
        ``-SIGKILL`` when the grace ran out (``None`` while it runs)."""
        return self._proc.poll()

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
        ``grace``; then remove the home and release the claim. Idempotent."""
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
            command.unregister_group(self.pgid)
            if self._keep_log is not None:
                with contextlib.suppress(OSError):
                    shutil.copyfile(self.home / CONSOLE_LOG, self._keep_log)
            remove_home(self.home)
            if self.claim is not None:
                self.claim.release()  # last: until now a reaper may finish the job


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
        # Before any JVM (the admin tool is one): a taken port leaves nothing behind.
        check_ports_free(name, config.fixed_ports(), HOST)
        plugins = [
            provision.ensure_plugin(plugin, provision.distribution_version(config.version))
            for plugin in config.plugins
        ]
        cds = self._cds_flags(java, lib)
        token = f"{name}-{secrets.token_hex(4)}"
        home = run_dir / token
        make_home(home, token)
        for plugin_dir in plugins:
            for jar in sorted(plugin_dir.glob("*.jar")):
                (home / "plugins" / jar.name).symlink_to(jar)
        fixed = config.fixed_ports()
        spare = iter([port for port in free_ports(2 + len(fixed), HOST) if port not in fixed])
        bolt_port = config.port or next(spare)
        http_port = config.http_port or next(spare)
        unrestricted = [f"{plugin}.*" for plugin in config.plugins]
        (home / "conf" / "neo4j.conf").write_text(
            render_conf(home, lib, bolt_port, http_port, self.settings, unrestricted)
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
        server = Neo4jProcess(endpoint, proc, home, None, run_dir / f"{token}.log")
        try:
            server.claim = claim_server(token, name, proc.pid, home)
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

    # --- the class-data archive ---------------------------------------------------

    def _cds_flags(self, java: str, lib: Path) -> list[str]:
        if not self.settings.class_data_sharing:
            return []
        archive = cds_archive(java, lib)
        if not archive.is_file() and self.provision_missing:
            # Like the jars: written on first use when provisioning did not.
            try:
                self.write_class_data(lib, wait=False)
            except InfrastructureError as exc:
                logger.warning("no Neo4j class-data archive (starts are slower): %s", exc)
        return cds_flags(archive)

    def write_class_data(self, lib: Path, *, wait: bool = True) -> Path | None:
        """Write the class-data archive of ``lib`` once; the archive, or None.

        One server starts with -XX:ArchiveClassesAtExit, runs a few queries so
        the Cypher runtime's classes are loaded too, and is stopped with a
        grace long enough for the dump; its file is renamed into place only
        after a clean exit. ``wait=False``: when another process is writing
        it, return None at once (that start runs without the archive).
        """
        java = java_binary()
        archive = cds_archive(java, lib)
        archive.parent.mkdir(parents=True, exist_ok=True)
        with try_file_lock(archive.parent / CDS_LOCK, wait=wait) as locked:
            if archive.is_file():
                return archive
            if not locked:
                return None
            token = f"cds-{secrets.token_hex(4)}"
            pending = pending_dump(archive, token)
            writer = Neo4jProcessBackend(
                dataclasses.replace(
                    self.settings,
                    class_data_sharing=False,
                    extra_jvm=(*self.settings.extra_jvm, f"-XX:ArchiveClassesAtExit={pending}"),
                ),
                provision_missing=False,
            )
            logger.info("writing the Neo4j class-data archive %s (once)", archive)
            clean = False
            try:
                with tempfile.TemporaryDirectory(prefix="neo4j-cds-") as tmp:
                    server = writer.start("class-data", ServiceConfig(backend="process"), Path(tmp))
                    try:
                        warm_up(server.endpoint)
                    finally:
                        server.stop(grace=CDS_DUMP_GRACE_SECONDS)
                clean = server.returncode == 0
            finally:
                # A killed or failed writer's dump is deleted, never trusted.
                saved = publish_cds(pending, archive, clean)
            return archive if saved else None
