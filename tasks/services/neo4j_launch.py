"""How the process backend launches Neo4j: the server home, neo4j.conf, the
JVM command line, the initial password and the class-data-sharing archive.

All of it is pure or touches only the per-run home, so it is testable
without starting a JVM. ``neo4j_process`` runs what this module builds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cicd import command
from cicd.errors import InfrastructureError
from tasks.services.base import logger

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
HOME_SUBDIRS = ("data", "logs", "run", "import", "plugins")
ADMIN_TIMEOUT_SECONDS = 120.0

# JVM flags of the 5.x distribution's `server.jvm.additional` defaults
# (https://neo4j.com/docs/operations-manual/5/configuration/configuration-settings/#config_server.jvm.additional),
# minus -XX:+AlwaysPreTouch (it touches the whole heap up front: slower start).
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


def make_home(home: Path, token: str) -> None:
    """A fresh server home carrying :data:`HOME_MARKER`, with every directory neo4j.conf names."""
    (home / "conf").mkdir(parents=True)
    (home / HOME_MARKER).write_text(token)
    for sub in HOME_SUBDIRS:
        (home / sub).mkdir()


def remove_home(home: Path) -> None:
    """Delete a server home, but only one we created (it carries our marker)."""
    if (home / HOME_MARKER).is_file():
        shutil.rmtree(home, ignore_errors=True)


def render_conf(
    home: Path,
    lib: Path,
    bolt_port: int,
    http_port: int,
    settings: ProcessSettings,
    unrestricted: Sequence[str] = (),
) -> str:
    """neo4j.conf for one run: loopback only, per-run directories, small memory.

    ``unrestricted``: procedure patterns of the installed plugins (``apoc.*``)
    that may use Neo4j's internal APIs, as APOC's install guide asks
    (https://neo4j.com/docs/apoc/5/installation/#restricted).
    """
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
    if unrestricted:
        values["dbms.security.procedures.unrestricted"] = ",".join(unrestricted)
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
    """The server's command line: what the 5.x bootloader would run, as one JVM."""
    return [
        java,
        f"-Xms{settings.heap_initial}",
        f"-Xmx{settings.heap_max}",
        *JVM_FLAGS,
        *cds,
        *settings.extra_jvm,
        f"{MARKER_PROPERTY}{token}",
        "-cp",
        # The jars first, the plugins after: a class-data archive written with the
        # jars alone still matches, since the JVM accepts entries appended to the
        # dump-time class path (https://docs.oracle.com/en/java/javase/17/vm/class-data-sharing.html).
        f"{lib}/*:{home / 'plugins'}/*",
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


def argument_file_line(value: str) -> str:
    """``value`` as one quoted argument of a picocli ``@file``.

    neo4j-admin is a picocli program, and picocli reads arguments from
    ``@path`` files (https://picocli.info/#AtFiles) with Java's
    ``StreamTokenizer``: within double quotes a backslash escapes the next
    character and ``\\n`` is a newline; an argument starting with ``@`` would
    itself be read as a file, and ``@@`` stands for a literal ``@``
    (measured with Neo4j 5.26's admin tool).
    """
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    if value.startswith("@"):
        escaped = "@" + escaped
    return f'"{escaped}"\n'


def set_initial_password(java: str, home: Path, lib: Path, password: str) -> None:
    """What the neo4j image does for NEO4J_AUTH: must run before the first start.

    ``neo4j-admin dbms set-initial-password`` takes the password only as an
    argument (its ``--help``: ``<password>``, no file or environment option).
    On argv it would be visible to every user in ``ps`` and in every line
    that prints the command (a cancelled run's error, the step log), so it
    goes through picocli's ``@file`` expansion instead: argv carries the
    path of a file only its owner can read, removed as soon as the tool ran.
    """
    secret_file = home / "run" / "initial-password.args"
    descriptor = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(argument_file_line(password))
    try:
        result = command.run(
            [
                java,
                "-Xmx128m",
                "-cp",
                f"{lib}/*",
                ADMIN_TOOL,
                "dbms",
                "set-initial-password",
                f"@{secret_file}",
            ],
            cwd=home,
            env=admin_env(home),
            timeout=ADMIN_TIMEOUT_SECONDS,
        )
    finally:
        secret_file.unlink(missing_ok=True)
    if not result.ok:
        # The output names the conf problem (the password is not in it); the
        # Java stack frames around it only bury the message.
        lines = [
            line
            for line in result.output.splitlines()
            if not line.lstrip().startswith(("at ", "... "))
        ]
        raise InfrastructureError(
            f"neo4j-admin dbms set-initial-password failed (exit {result.returncode}"
            f"{', timed out' if result.timed_out else ''}):\n" + "\n".join(lines[-20:])
        )


# --- class-data sharing -------------------------------------------------------
#
# Loading and verifying ~20k classes from 213 jars is a large part of every
# start. Provisioning writes a dynamic CDS archive of the classes a server
# loads once (-XX:ArchiveClassesAtExit, https://openjdk.org/jeps/350;
# ``neo4j_process.write_class_data``); servers only map it, read-only
# (-XX:SharedArchiveFile). A server never dumps at exit: the dump takes 7-40 s
# on a busy 2-core box, longer than a stop may. A stale or foreign archive is
# harmless: the JVM's default -Xshare:auto just runs without it.

CDS_DIR = "cds"
CDS_LOCK = ".write.lock"
STALE_DUMP_SECONDS = 3600.0


def cds_archive(java: str, lib: Path) -> Path:
    """The archive for this JVM build and jar set, beside the jar cache."""
    binary = Path(java).resolve()
    stat = binary.stat()
    key = hashlib.sha256(f"{binary}:{stat.st_size}:{stat.st_mtime_ns}:{lib}".encode()).hexdigest()
    return lib.parent / CDS_DIR / f"neo4j-{key[:16]}.jsa"


def cds_flags(archive: Path) -> list[str]:
    """JVM flags that map ``archive`` when it has been written; none before."""
    return [f"-XX:SharedArchiveFile={archive}"] if archive.is_file() else []


def pending_dump(archive: Path, token: str) -> Path:
    """Where the writing server dumps (its own file: a killed dump is never read)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for stale in archive.parent.glob("tmp-*.jsa"):
        # Dumps of writers that were killed; a live dump is minutes old at most.
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > STALE_DUMP_SECONDS:
                stale.unlink()
    return archive.parent / f"tmp-{token}.jsa"


def publish_cds(pending: Path, archive: Path, clean_exit: bool) -> bool:
    """Rename a complete dump into place; whether it was."""
    if clean_exit and pending.is_file() and pending.stat().st_size > 0:
        os.replace(pending, archive)  # atomic: readers never map half a file
        logger.info("saved the Neo4j class-data archive %s", archive)
        return True
    pending.unlink(missing_ok=True)
    return False
