"""Service containers: a real Neo4j 5.26 server started, used and stopped.

Tests marked ``neo4j`` start real JVMs (each start costs ~10 s on 2 cores),
so there are few of them and each checks several things. The rest exercise
the same code paths without a server: reaping against real processes, the
docker backend's selection and container spec, provisioning with a real
(fake-output) Maven process, and the Prefect concurrency limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cicd import ownership
from cicd.config import DEFAULT_NEO4J_EXPORT, PipelineConfig, ServiceConfig
from cicd.errors import BadInput, ConfigError, InfrastructureError
from tasks.services import (
    NEO4J_LIMIT,
    ServiceEndpoint,
    max_servers,
    neo4j_slot,
    reap_orphans,
    running_services,
    select_backend,
)
from tasks.services import provision as prov
from tasks.services.host import free_ports, process_start_time
from tasks.services.neo4j_docker import (
    Neo4jDockerBackend,
    container_spec,
    engine_answers,
    owner_is_gone,
    owner_label,
    published_port,
)
from tasks.services.neo4j_launch import (
    HOME_MARKER,
    MARKER_PROPERTY,
    ProcessSettings,
    cds_archive,
    cds_flags,
    pending_dump,
    publish_cds,
)
from tasks.services.neo4j_process import Neo4jProcessBackend
from tasks.services.neo4j_reaping import ServerRecord, claim_server
from tasks.services.neo4j_reaping import server_records as claimed_servers

REPO_ROOT = Path(__file__).resolve().parent.parent


# --- fixtures ----------------------------------------------------------------


@pytest.fixture
def service_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private CICD_HOME (pid files) that still uses the shared Neo4j jar cache."""
    jars = os.environ.get("CICD_NEO4J_HOME") or str(
        Path.home() / ".cache" / "cicd-flows" / "services" / "neo4j" / prov.DEFAULT_NEO4J_VERSION
    )
    monkeypatch.setenv("CICD_NEO4J_HOME", jars)
    monkeypatch.setenv("CICD_HOME", str(tmp_path / "cicd-home"))
    return tmp_path


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def server_records() -> list[ServerRecord]:
    return claimed_servers()


DYING_OWNER = """\
import os, sys
from pathlib import Path
from tasks.services.neo4j_reaping import claim_server
claim_server(sys.argv[1], "neo4j", int(sys.argv[2]), Path(sys.argv[3]))
os._exit(0)  # like a flow killed mid-test: the claim is never released
"""


def claim_by_a_dead_owner(token: str, pid: int, home: Path) -> None:
    """A claim on a server whose owner (a real process) died holding it."""
    subprocess.run(
        [sys.executable, "-c", DYING_OWNER, token, str(pid), str(home)],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=True, timeout=60,
    )  # fmt: skip


def spawn_sleeper(*extra_args: str) -> subprocess.Popen[bytes]:
    """A live process that is not a Neo4j server, in its own group."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", *extra_args],
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


ORPHAN_SCRIPT = """\
import pathlib, signal, sys, time
note = pathlib.Path(sys.argv[1])
def on_term(*_):
    note.write_text("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
note.write_text("ready")
time.sleep(120)
"""
LAUNCHER = (
    "import subprocess, sys; "
    "print(subprocess.Popen(sys.argv[1:], start_new_session=True, stdin=subprocess.DEVNULL, "
    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"
)


def spawn_orphan(note: Path, *extra_args: str) -> int:
    """A process in its own group whose parent has exited, like a server whose
    flow crashed; it writes ``SIGTERM`` to ``note`` when it gets one."""
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-c", ORPHAN_SCRIPT, str(note),
         *extra_args],
        capture_output=True, text=True, timeout=30, check=True,
    )
    pid = int(done.stdout)
    deadline = time.monotonic() + 20
    while not (note.is_file() and note.read_text() == "ready"):
        assert time.monotonic() < deadline, "the orphan never installed its SIGTERM handler"
        time.sleep(0.05)
    return pid


def kill_orphan(pid: int, start_time: int | None, marker: str) -> None:
    """SIGKILL an orphan a test left running, only if the PID is still that process."""
    if process_start_time(pid) == start_time and marker in Path(
        f"/proc/{pid}/cmdline"
    ).read_bytes().decode(errors="replace"):
        os.killpg(pid, signal.SIGKILL)


def dead_process_identity() -> tuple[int, int | None]:
    """PID and start time of a process that has exited (a crashed flow)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    identity = (proc.pid, process_start_time(proc.pid))
    proc.kill()
    proc.wait()
    return identity


# --- endpoint and exported environment ------------------------------------------


def test_endpoint_exports_the_default_names() -> None:
    endpoint = ServiceEndpoint("neo4j", "127.0.0.1", 40001, 40002, "neo4j", "test-password")

    env = endpoint.env(ServiceConfig().export)

    assert env == {
        "NEO4J_URI": "bolt://127.0.0.1:40001",
        "NEO4J_USER": "neo4j",
        "NEO4J_PASSWORD": "test-password",
        "NEO4J_TEST_URI": "bolt://127.0.0.1:40001",
        "NEO4J_TEST_PASSWORD": "test-password",
    }
    assert set(env) == set(DEFAULT_NEO4J_EXPORT)


def test_endpoint_renders_a_custom_export() -> None:
    config = ServiceConfig(
        export={
            "GRAPH_URL": "http://{host}:{http_port}", "BOLT": "{uri}", "AUTH": "{user}:{password}"
        }
    )
    endpoint = ServiceEndpoint("g", "127.0.0.1", 7000, 7001, "neo4j", "s3cret-pass")

    assert endpoint.env(config.export) == {
        "GRAPH_URL": "http://127.0.0.1:7001",
        "BOLT": "bolt://127.0.0.1:7000",
        "AUTH": "neo4j:s3cret-pass",
    }
    no_http = ServiceEndpoint("g", "127.0.0.1", 7000, None, "neo4j", "s3cret-pass")
    assert no_http.placeholders()["http_port"] == ""


def test_free_ports_are_distinct_and_bindable() -> None:
    import socket

    ports = free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_user_other_than_neo4j_is_a_config_error(service_state: Path) -> None:
    with pytest.raises(ConfigError, match=r"services\.graph\.user.*'admin'"):
        Neo4jProcessBackend().start("graph", ServiceConfig(user="admin"), service_state / "run")
    assert not (service_state / "run").exists() or not any((service_state / "run").iterdir())


def test_unknown_service_name_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="unknown service 'redis'"), running_services(
        {"neo4j": ServiceConfig()}, ["redis"], tmp_path
    ):
        pass


# --- backend selection and the docker backend (no engine on this machine) -----------


def test_auto_selects_the_process_backend_when_no_engine_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A real connection attempt to a port nobody listens on.
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{free_ports(1)[0]}")
    assert engine_answers() is False
    assert Neo4jDockerBackend().available() is False

    assert select_backend(ServiceConfig(backend="auto")).name == "process"
    assert select_backend(ServiceConfig(backend="process")).name == "process"
    with pytest.raises(InfrastructureError, match="no Docker engine answers"):
        select_backend(ServiceConfig(backend="docker"))


def test_docker_backend_unavailable_without_a_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    if Path("/var/run/docker.sock").exists():
        pytest.skip("this machine has a Docker socket")
    assert Neo4jDockerBackend().available() is False


def test_container_spec_matches_the_github_actions_service() -> None:
    config = PipelineConfig.model_validate(
        {"services": {"neo4j": {"version": "5.26", "password": "test-password"}}}
    ).services["neo4j"]

    spec = container_spec("neo4j", config, "neo4j-abcd", "host:1:2")

    assert spec["image"] == "neo4j:5.26"
    assert spec["environment"]["NEO4J_AUTH"] == "neo4j/test-password"
    assert spec["ports"] == {"7687/tcp": ("127.0.0.1", None), "7474/tcp": ("127.0.0.1", None)}
    assert spec["labels"] == {
        "cicd-flows.service": "neo4j",
        "cicd-flows.name": "neo4j",
        "cicd-flows.owner": "host:1:2",
    }
    assert spec["detach"] is True
    assert spec["name"] == "cicd-neo4j-neo4j-abcd"
    exact = container_spec("neo4j", ServiceConfig(version="5.26.30"), "t", "o")
    assert exact["image"] == "neo4j:5.26.30"
    # What docker-py sends to the engine: loopback, engine-chosen host ports.
    from docker.utils import convert_port_bindings

    assert convert_port_bindings(spec["ports"])["7687/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": ""}
    ]
    assert "NEO4J_PLUGINS" not in spec["environment"]
    # A fixed port and APOC, as `ports: ["7687:7687"]` and NEO4J_PLUGINS would give.
    fixed = container_spec("neo4j", ServiceConfig(port=7687, plugins=["apoc"]), "t", "o")
    assert convert_port_bindings(fixed["ports"])["7687/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": "7687"}
    ]
    assert fixed["ports"]["7474/tcp"] == ("127.0.0.1", None)
    assert fixed["environment"]["NEO4J_PLUGINS"] == '["apoc"]'
    assert fixed["environment"]["NEO4J_dbms_security_procedures_unrestricted"] == "apoc.*"


def test_published_ports_are_read_from_the_inspected_container() -> None:
    attrs = {"NetworkSettings": {"Ports": {
        "7687/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}],
        "7474/tcp": None,
    }}}
    assert published_port(attrs, "7687/tcp") == 32768
    with pytest.raises(InfrastructureError, match="7474/tcp"):
        published_port(attrs, "7474/tcp")


def test_container_owner_labels_identify_dead_owners() -> None:
    assert owner_is_gone(owner_label()) is False  # this process is alive
    pid, start = dead_process_identity()
    host = owner_label().split(":")[0]
    assert owner_is_gone(f"{host}:{pid}:{start}") is True
    # Another worker's container is never judged from here.
    assert owner_is_gone(f"some-other-host:{pid}:{start}") is False


# --- orphan reaping against real processes (no JVM) ----------------------------------


def test_reap_kills_a_marked_server_of_a_dead_owner_only(service_state: Path) -> None:
    token = "neo4j-deadbeef"
    # Carries the marker like a real server's java command line does, and,
    # like a server whose flow crashed, is nobody's child here.
    note = service_state / "orphan-note"
    fake_server = spawn_orphan(note, f"{MARKER_PROPERTY}{token}")
    fake_start = process_start_time(fake_server)
    live_token = "neo4j-live0000"
    live_server = spawn_sleeper(f"{MARKER_PROPERTY}{live_token}")
    home = service_state / "run" / token
    home.mkdir(parents=True)
    (home / HOME_MARKER).write_text(token)
    live = None
    try:
        claim_by_a_dead_owner(token, fake_server, home)
        # Owned by this (live) process: in use, must survive.
        live = claim_server(live_token, "neo4j", live_server.pid, service_state / "nowhere")

        killed = reap_orphans()

        assert killed == [str(fake_server)]
        assert note.read_text() == "SIGTERM"  # asked to stop cleanly first
        assert process_start_time(fake_server) is None
        assert live_server.poll() is None
        assert not home.exists()
        assert [r.token for r in server_records()] == [live_token]
    finally:
        if live is not None:
            live.release()
        kill_orphan(fake_server, fake_start, MARKER_PROPERTY)
        kill_group(live_server)


def test_reap_never_kills_an_unrelated_process_with_a_recorded_pid(service_state: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "120"], start_new_session=True)
    # Not our marker-less home: reaping must not delete it either.
    foreign_dir = service_state / "not-ours"
    foreign_dir.mkdir()
    try:
        # Same PID and start time (a perfectly recycled PID): only the
        # command-line marker tells it apart from a server.
        claim_by_a_dead_owner("neo4j-0badf00d", sleeper.pid, foreign_dir)
        (ownership.owned_dir() / "garbage.json").write_text("{not json")

        assert reap_orphans() == []

        time.sleep(0.2)
        assert sleeper.poll() is None
        assert foreign_dir.is_dir()
        assert list(ownership.owned_dir().glob("*.json")) == []  # stale records are cleaned up
    finally:
        kill_group(sleeper)


# --- class-data sharing archive ---------------------------------------------------------


def test_servers_only_map_a_written_archive_and_never_dump(tmp_path: Path) -> None:
    lib = tmp_path / "dist" / "lib"
    lib.mkdir(parents=True)
    archive = cds_archive(sys.executable, lib)
    assert archive.parent == tmp_path / "dist" / "cds"
    assert cds_flags(archive) == []  # no archive yet: no flag, and no dump at exit either

    old_dump = archive.parent / "tmp-neo4j-old.jsa"
    archive.parent.mkdir()
    old_dump.write_bytes(b"killed mid-dump")
    os.utime(old_dump, (time.time() - 7200, time.time() - 7200))
    pending = pending_dump(archive, "cds-1")
    assert pending.parent == archive.parent and pending != archive
    assert not old_dump.exists()

    pending.write_bytes(b"archive")
    assert not publish_cds(pending, archive, clean_exit=False)  # a killed writer's dump
    assert not archive.exists() and not pending.exists()

    pending = pending_dump(archive, "cds-2")
    pending.write_bytes(b"archive")
    assert publish_cds(pending, archive, clean_exit=True)
    assert archive.read_bytes() == b"archive" and not pending.exists()
    assert cds_flags(archive) == [f"-XX:SharedArchiveFile={archive}"]


# --- provisioning ---------------------------------------------------------------------


def test_distribution_version_maps_the_config_value() -> None:
    assert prov.distribution_version("5.26") == prov.DEFAULT_NEO4J_VERSION
    assert prov.distribution_version("5.26.7") == "5.26.7"
    with pytest.raises(BadInput, match=r"'5\.25'"):
        prov.distribution_version("5.25")


def write_fake_mvn(path: Path, *, fail: bool) -> Path:
    """A stand-in for Maven that writes into -DoutputDirectory like copy-dependencies."""
    script = textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        from pathlib import Path
        args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("-D") and "=" in a)
        out = Path(args["outputDirectory"])
        (out / f"neo4j-{{args['neo4j.version']}}.jar").write_text("jar")
        (out / "argv.txt").write_text("\\n".join(sys.argv[1:]))
        if {fail!r}:
            print("[ERROR] Could not resolve dependencies for project local.cicd-flows")
            sys.exit(1)
        """)
    path.write_text(script)
    path.chmod(0o755)
    return path


def test_provision_is_atomic_when_maven_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CICD_NEO4J_HOME", str(tmp_path / "dist"))
    mvn = write_fake_mvn(tmp_path / "mvn", fail=True)

    with pytest.raises(InfrastructureError, match="Could not resolve dependencies"):
        prov.ensure_neo4j("5.26.30", mvn=str(mvn))

    assert not (tmp_path / "dist" / "lib").exists()
    assert [p.name for p in (tmp_path / "dist").iterdir()] == [".provision.lock"]


def test_provision_runs_maven_once_and_renames_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CICD_NEO4J_HOME", str(tmp_path / "dist"))
    mvn = write_fake_mvn(tmp_path / "mvn", fail=False)

    lib = prov.ensure_neo4j("5.26.30", mvn=str(mvn))

    assert lib == tmp_path / "dist" / "lib"
    argv = (lib / "argv.txt").read_text().splitlines()
    assert argv[:5] == ["-B", "-q", "-f", str(prov.POM), prov.DEPENDENCY_PLUGIN]
    assert "-DincludeScope=runtime" in argv
    (lib / "argv.txt").unlink()
    # Second call: already there, Maven is not run again.
    assert prov.ensure_neo4j("5.26.30", mvn=str(mvn)) == lib
    assert not (lib / "argv.txt").exists()


def test_provision_script_reports_the_cache(tmp_path: Path) -> None:
    (tmp_path / "dist" / "lib").mkdir(parents=True)
    (tmp_path / "dist" / "lib" / "neo4j-5.26.30.jar").write_text("jar")
    env = {**os.environ, "CICD_NEO4J_HOME": str(tmp_path / "dist")}

    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "provision-neo4j"), "--no-class-data"], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "already present" in done.stdout
    bad = subprocess.run(
        [str(REPO_ROOT / "scripts" / "provision-neo4j"), "--version", "4.4"], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 2
    assert "'4.4'" in bad.stderr


def write_fake_plugin_mvn(path: Path, jars: list[str]) -> Path:
    """A stand-in for Maven resolving a plugin's POM: it writes ``jars``."""
    script = textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        from pathlib import Path
        args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("-D") and "=" in a)
        out = Path(args["outputDirectory"])
        for jar in {jars!r}:
            (out / jar).write_text("jar")
        (out / "argv.txt").write_text("\\n".join(sys.argv[1:]))
        """)
    path.write_text(script)
    path.chmod(0o755)
    return path


def test_a_plugin_is_fetched_once_beside_the_jars_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CICD_NEO4J_HOME", str(tmp_path / "dist"))
    lib = tmp_path / "dist" / "lib"
    lib.mkdir(parents=True)
    for jar in ("neo4j-5.26.30.jar", "commons-lang3-3.18.0.jar"):
        (lib / jar).write_text("jar")
    _, _, apoc_version = prov.PLUGINS["apoc"]
    mvn = write_fake_plugin_mvn(
        tmp_path / "mvn",
        [f"apoc-core-{apoc_version}.jar", "commons-lang3-3.12.0.jar", "opencsv-5.7.1.jar"],
    )

    plugins = prov.ensure_plugin("apoc", "5.26.30", mvn=str(mvn))

    assert plugins == tmp_path / "dist" / "plugins" / f"apoc-core-{apoc_version}"
    argv = (plugins / "argv.txt").read_text().splitlines()
    assert argv[3] == str(REPO_ROOT / ".ci" / "neo4j" / "apoc" / "pom.xml")
    assert f"-Dapoc.version={apoc_version}" in argv
    # The server's newer commons-lang3 wins; the plugin's own jars stay.
    assert sorted(p.name for p in plugins.glob("*.jar")) == [
        f"apoc-core-{apoc_version}.jar", "opencsv-5.7.1.jar",
    ]
    (plugins / "argv.txt").unlink()
    assert prov.ensure_plugin("apoc", "5.26.30", mvn=str(mvn)) == plugins
    assert not (plugins / "argv.txt").exists()  # Maven did not run again
    with pytest.raises(BadInput, match="unknown Neo4j plugin 'gds'"):
        prov.ensure_plugin("gds", "5.26.30", mvn=str(mvn))


@pytest.mark.slow
def test_pom_resolves_the_server_classpath_with_real_maven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    if shutil.which("mvn") is None:
        pytest.skip("Maven is not installed")
    monkeypatch.setenv("CICD_NEO4J_HOME", str(tmp_path / "dist"))

    lib = prov.ensure_neo4j("5.26.30")

    names = {p.name for p in lib.glob("*.jar")}
    assert {"neo4j-5.26.30.jar", "neo4j-bolt-5.26.30.jar", "neo4j-server-5.26.30.jar"} <= names
    assert len(names) > 150
    assert not list((tmp_path / "dist").glob("lib.partial-*"))


# --- the Prefect concurrency limit ---------------------------------------------------


def test_neo4j_slot_without_a_prefect_api_runs_unlimited() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        start = time.monotonic()
        with neo4j_slot():
            inside = time.monotonic() - start
    # No temporary Prefect server was booted just to count servers.
    assert inside < 1.0


def test_max_servers_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CICD_NEO4J_MAX_SERVERS", raising=False)
    assert max_servers() == 2
    monkeypatch.setenv("CICD_NEO4J_MAX_SERVERS", "3")
    assert max_servers() == 3
    monkeypatch.setenv("CICD_NEO4J_MAX_SERVERS", "zero")
    with pytest.raises(BadInput, match="CICD_NEO4J_MAX_SERVERS='zero'"):
        max_servers()


@pytest.mark.slow
def test_neo4j_slot_creates_and_holds_the_global_limit(
    prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    def delete_limit() -> None:
        with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
            client.delete_global_concurrency_limit_by_name(NEO4J_LIMIT)

    monkeypatch.setenv("CICD_NEO4J_MAX_SERVERS", "3")
    delete_limit()
    try:
        with neo4j_slot(), get_client(sync_client=True) as client:
            held = client.read_global_concurrency_limit_by_name(NEO4J_LIMIT)
        with get_client(sync_client=True) as client:
            after = client.read_global_concurrency_limit_by_name(NEO4J_LIMIT)
    finally:
        delete_limit()
    assert held.limit == 3
    assert held.active_slots == 1
    assert after.active_slots == 0


# --- fixed ports -------------------------------------------------------------------------

FIXED_PORT = 7687  # what suites hard-code (localhost:7687)


@contextlib.contextmanager
def port_taken(port: int) -> Iterator[None]:
    """A listener on ``port`` that is not ours, like another program's server."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Else a server that just stopped on the port (TIME_WAIT) keeps this bind from working.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError:
            pass  # someone else already holds it: taken all the same
        yield


def processes_under(path: Path) -> list[int]:
    """PIDs whose command line names ``path`` (a server or admin JVM of that run dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(path) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
    return found


def test_a_taken_fixed_port_is_a_clear_error_before_any_jvm(service_state: Path) -> None:
    from tasks.services.host import PortInUse

    run_dir = service_state / "run"
    configs = {"graph": ServiceConfig(backend="process", port=FIXED_PORT)}
    with port_taken(FIXED_PORT):
        with pytest.raises(PortInUse) as failure, running_services(configs, ["graph"], run_dir):
            pytest.fail("started on a taken port")
        assert processes_under(service_state) == []

    message = str(failure.value)
    assert f"port {FIXED_PORT}" in message and "service 'graph'" in message
    assert isinstance(failure.value, InfrastructureError)
    assert server_records() == []
    assert not any(p.is_dir() for p in run_dir.iterdir())  # no server home was made
    # A free random port is never refused: the check is only for fixed ports.
    assert ServiceConfig(backend="process").fixed_ports() == []


HOLD_PORT = """\
import sys, time
from pathlib import Path
from tasks.services.slots import port_lock
with port_lock(int(sys.argv[1]), "holder"):
    Path(sys.argv[2]).write_text(str(time.time()))
    time.sleep(float(sys.argv[3]))
    Path(sys.argv[4]).write_text(str(time.time()))
"""


def test_runs_wanting_the_same_port_take_turns_and_free_ports_do_not_wait(
    tmp_path: Path,
) -> None:
    from tasks.services import service_slots

    port = free_ports(1)[0]  # a port of its own: this test runs beside real 7687 users
    held, released = tmp_path / "held", tmp_path / "released"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_PORT, str(port), str(held), "3", str(released)],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while not held.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.exists()
        fixed = [("graph", ServiceConfig(port=port))]
        free = [("other", ServiceConfig())]

        with service_slots(free):  # another run's free ports: no turn to wait for
            assert not released.exists()
        with (
            pytest.raises(InfrastructureError, match=f"port {port} still held"),
            service_slots(fixed, timeout_seconds=0.2),
        ):
            pass
        with service_slots(fixed):  # waits for the holder, then has the port
            entered = time.time()
        assert released.exists()
        assert entered >= float(released.read_text())
    finally:
        holder.kill()
        holder.wait()


# --- real servers ----------------------------------------------------------------------


def run_cypher(uri: str, user: str, password: str, query: str) -> list[dict[str, object]]:
    from neo4j import GraphDatabase

    with GraphDatabase.driver(uri, auth=(user, password)) as driver, driver.session(
        database="neo4j"
    ) as session:
        return [record.data() for record in session.run(query)]


@pytest.mark.neo4j
@pytest.mark.slow
def test_two_real_servers_serve_cypher_and_stop(service_state: Path) -> None:
    from neo4j.exceptions import AuthError

    configs = {
        "neo4j": ServiceConfig(backend="process"),
        "graph": ServiceConfig(
            backend="process",
            # Every character the admin tool's @file could misread (neo4j_launch).
            password='@another "pass" \\word #1',
            export={"GRAPH_URI": "{uri}", "GRAPH_HTTP": "http://{host}:{http_port}",
                    "GRAPH_PASSWORD": "{password}"},
        ),
    }
    run_dir = service_state / "run"

    with running_services(configs, ["neo4j", "graph"], run_dir) as env:
        records = {r.name: r for r in server_records()}
        assert set(records) == {"neo4j", "graph"}
        assert set(env) == set(DEFAULT_NEO4J_EXPORT) | {"GRAPH_URI", "GRAPH_HTTP", "GRAPH_PASSWORD"}
        assert env["NEO4J_USER"] == "neo4j"
        assert env["NEO4J_TEST_URI"] == env["NEO4J_URI"]
        assert env["NEO4J_URI"] != env["GRAPH_URI"]  # two servers, different ports

        created = run_cypher(
            env["NEO4J_URI"], env["NEO4J_USER"], env["NEO4J_PASSWORD"],
            "CREATE (a:Agent {name: 'x'})-[:USES]->(t:Tool {name: 'y'}) RETURN a.name AS a",
        )
        assert created == [{"a": "x"}]
        # The servers are separate databases.
        counted = run_cypher(env["GRAPH_URI"], "neo4j", env["GRAPH_PASSWORD"],
                             "MATCH (n) RETURN count(n) AS n")
        assert counted == [{"n": 0}]
        with pytest.raises(AuthError):
            run_cypher(env["NEO4J_URI"], "neo4j", "wrong-password", "RETURN 1")
        with pytest.raises(AuthError):  # each server has its own configured password
            run_cypher(env["GRAPH_URI"], "neo4j", env["NEO4J_PASSWORD"], "RETURN 1")

        import urllib.request

        with urllib.request.urlopen(env["GRAPH_HTTP"], timeout=10) as response:
            assert response.status == 200
        stopping = time.monotonic()

    # Neo4j exits ~2-3 s after SIGTERM; stop() must notice the exit rather
    # than wait out its 30 s grace on the unreaped (zombie) JVM.
    assert time.monotonic() - stopping < 2 * 12
    for record in records.values():
        assert process_start_time(record.pid) is None
        assert not group_exists(record.pid)
        assert not Path(record.home).exists()
    assert server_records() == []
    # The server's console log is kept beside the (deleted) homes for the report.
    assert sorted(p.suffix for p in run_dir.iterdir()) == [".log", ".log"]


@pytest.mark.neo4j
@pytest.mark.slow
def test_an_exception_inside_the_context_still_stops_the_server(service_state: Path) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), running_services(
        {"neo4j": ServiceConfig(backend="process")}, ["neo4j"], service_state / "run"
    ) as env:
        (record,) = server_records()
        assert run_cypher(env["NEO4J_URI"], "neo4j", "test-password", "RETURN 1 AS one") == [
            {"one": 1}
        ]
        raise Boom

    assert process_start_time(record.pid) is None
    assert not group_exists(record.pid)
    assert server_records() == []


@pytest.mark.neo4j
@pytest.mark.slow
def test_an_orphaned_server_of_a_crashed_flow_is_reaped(service_state: Path) -> None:
    crashing_flow = textwrap.dedent("""\
        import json, os, sys
        from pathlib import Path
        from cicd.config import ServiceConfig
        from tasks.services.neo4j_process import Neo4jProcessBackend
        server = Neo4jProcessBackend().start("neo4j", ServiceConfig(), Path(sys.argv[1]))
        print(json.dumps({"pid": server.pid, "uri": server.endpoint.uri}), flush=True)
        os._exit(0)  # like a flow killed mid-test: no finally, no atexit
        """)
    done = subprocess.run(
        [sys.executable, "-c", crashing_flow, str(service_state / "run")],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    orphan = json.loads(done.stdout.strip().splitlines()[-1])
    pid = orphan["pid"]
    try:
        assert process_start_time(pid) is not None  # survived its flow
        assert run_cypher(orphan["uri"], "neo4j", "test-password", "RETURN 1 AS one") == [
            {"one": 1}
        ]

        assert reap_orphans() == [str(pid)]

        deadline = time.monotonic() + 10
        while process_start_time(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_start_time(pid) is None
        assert server_records() == []
        assert not any(p.is_dir() for p in (service_state / "run").iterdir())
    finally:
        # Only if the test failed before reaping: the marker check guards the PID.
        if process_start_time(pid) is not None and MARKER_PROPERTY in " ".join(
            Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        ):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.neo4j
def test_a_server_that_cannot_start_fails_fast_with_its_log(service_state: Path) -> None:
    # Valid syntax for neo4j-admin, but the server refuses page cache + heap > RAM.
    backend = Neo4jProcessBackend(ProcessSettings(page_cache="100000g"))
    start = time.monotonic()

    with pytest.raises(InfrastructureError) as failure:
        backend.start("neo4j", ServiceConfig(startup_timeout=120), service_state / "run")

    assert time.monotonic() - start < 60  # the exit is noticed, not the 120 s deadline
    message = str(failure.value)
    assert "stopped before it was healthy" in message
    assert "exceeds physical memory" in message  # the server's own log line
    assert server_records() == []
    assert not any(p.is_dir() for p in (service_state / "run").iterdir())



@pytest.mark.neo4j
@pytest.mark.slow
def test_two_runs_on_port_7687_take_turns_and_get_apoc(service_state: Path) -> None:
    import threading

    from tasks.services import service_slots

    configs = {"neo4j": ServiceConfig(backend="process", port=FIXED_PORT, plugins=["apoc"])}
    spans: list[tuple[float, float, list[dict[str, object]]]] = []
    errors: list[BaseException] = []

    def one_run(label: str) -> None:
        try:
            with service_slots(configs.items()), running_services(
                configs, ["neo4j"], service_state / label
            ) as env:
                entered = time.monotonic()
                assert env["NEO4J_URI"] == f"bolt://127.0.0.1:{FIXED_PORT}"
                # What a suite that hard-codes the address does.
                rows = run_cypher(
                    f"bolt://localhost:{FIXED_PORT}", "neo4j", "test-password",
                    "RETURN apoc.version() AS version, "
                    "apoc.coll.sum([1, 2, 3]) AS total, apoc.text.join(['a', 'b'], '-') AS joined",
                )
                spans.append((entered, time.monotonic(), rows))
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one_run, args=(f"run-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    if errors:
        raise errors[0]

    (_, first_left, rows), (second_entered, _, _) = sorted(spans)
    assert first_left <= second_entered  # one server on 7687 at a time, neither failed
    _, _, apoc_version = prov.PLUGINS["apoc"]
    assert rows == [{"version": apoc_version, "total": 6.0, "joined": "a-b"}]
    assert server_records() == []


@pytest.mark.neo4j
@pytest.mark.slow
def test_class_data_is_written_once_and_servers_only_map_it(
    service_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.services.host import process_cmdline
    from tasks.services.neo4j_launch import java_binary

    # A distribution of its own (the shared jars, a private cds/ beside them).
    dist = service_state / "dist"
    dist.mkdir()
    (dist / "lib").symlink_to(prov.lib_dir(prov.DEFAULT_NEO4J_VERSION))
    monkeypatch.setenv("CICD_NEO4J_HOME", str(dist))
    lib = prov.lib_dir(prov.DEFAULT_NEO4J_VERSION)
    backend = Neo4jProcessBackend(provision_missing=False)

    archive = backend.write_class_data(lib)

    assert archive == cds_archive(java_binary(), lib) and archive.is_file()
    assert archive.stat().st_size > 10_000_000  # the classes of a server, not a stub
    assert list(archive.parent.glob("tmp-*.jsa")) == []
    assert server_records() == []  # the writer is gone
    assert backend.write_class_data(lib) == archive  # once: no second writer

    server = backend.start("neo4j", ServiceConfig(backend="process"), service_state / "run")
    try:
        argv = process_cmdline(server.pid)
        assert f"-XX:SharedArchiveFile={archive}" in argv
        assert not any(arg.startswith("-XX:ArchiveClassesAtExit") for arg in argv)
        # Mapped, so really in use (-Xshare:auto would silently run without it).
        assert str(archive) in Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        server.stop()
    assert server.returncode == 0  # it exited on SIGTERM; the kill path was not taken
