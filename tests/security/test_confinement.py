"""Untrusted test code stays in its box (issue 13, items 2 and 3).

Real bubblewrap, real processes, real TCP servers on the host's 127.0.0.1:
each test runs a command the way a target's test would, and checks from the
host what it could see, reach, read, write, and what it left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cicd import paths
from cicd.config import EnvironmentConfig, SuiteConfig
from cicd.errors import BadInput
from cicd.sandbox import SANDBOX_UID, Sandbox, SandboxUnavailable, job_environment
from cicd.sandbox_step import step_sandbox
from tasks.environments import ensure_environment
from tasks.job import Deadline, run_step
from tasks.testing import run_suite

AVAILABILITY = Sandbox.available()
pytestmark = pytest.mark.skipif(not AVAILABILITY.ok, reason=AVAILABILITY.reason)
SYSTEM_PYTHON = "/usr/bin/python3"
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agentkit"


@pytest.fixture
def workspace() -> Iterator[Path]:
    path = paths.workspaces() / f"box-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class EchoServer:
    """A TCP server on the host's 127.0.0.1 answering ``echo:<what it got>``."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"echo:" + conn.recv(100))

    def close(self) -> None:
        # shutdown first: a close() alone leaves the socket listening while
        # the accept() of the serving thread still holds it.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def echo_servers() -> Iterator[list[EchoServer]]:
    servers = [EchoServer(), EchoServer()]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def run_boxed(
    sandbox: Sandbox, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    with sandbox:
        wrapped, environ = sandbox.wrap(argv, env if env is not None else {"PATH": "/usr/bin"})
        return subprocess.run(wrapped, env=environ, capture_output=True, text=True, timeout=60)


def connect_code(port: int) -> str:
    return textwrap.dedent(
        f"""
        import socket
        try:
            with socket.create_connection(("127.0.0.1", {port}), timeout=5) as s:
                s.sendall(b"ping")
                print(s.recv(100).decode())
        except OSError as exc:
            print("refused:", type(exc).__name__)
        """
    )


def host_processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


def test_the_box_sees_only_its_own_processes(workspace: Path) -> None:
    done = run_boxed(Sandbox(workspace), ["/bin/sh", "-c", "ls /proc"])

    pids = [int(name) for name in done.stdout.split() if name.isdigit()]
    assert done.returncode == 0, done.stderr
    # bwrap's init, sh, ls: the worker and its Prefect server are not there.
    assert pids and max(pids) < 10, pids
    assert os.getpid() > 10  # so the host's own PIDs would have shown


def test_only_allowed_ports_of_the_host_are_reachable(
    workspace: Path, echo_servers: list[EchoServer]
) -> None:
    allowed, other = echo_servers
    sandbox = Sandbox(workspace, allow_ports=[allowed.port])

    reached = run_boxed(sandbox, [SYSTEM_PYTHON, "-c", connect_code(allowed.port)])
    blocked = run_boxed(sandbox, [SYSTEM_PYTHON, "-c", connect_code(other.port)])

    assert reached.stdout.strip() == "echo:ping", reached.stderr
    assert blocked.stdout.strip() == "refused: ConnectionRefusedError", blocked.stderr
    # The same connection from the host works: only the box is cut off.
    with socket.create_connection(("127.0.0.1", other.port), timeout=5) as conn:
        conn.sendall(b"host")
        assert conn.recv(100) == b"echo:host"


def test_files_outside_the_view_cannot_be_read(workspace: Path) -> None:
    secret = paths.home() / "secrets" / "index-token"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("pypi-stolen-token-value\n")
    neighbour = paths.workspaces() / f"other-{workspace.name}"
    neighbour.mkdir()
    (neighbour / "conftest.py").write_text("OTHER_JOB = 'secret'\n")
    try:
        done = run_boxed(
            Sandbox(workspace),
            ["/bin/sh", "-c", f"cat {secret}; cat {neighbour}/conftest.py; ls /root; true"],
        )
    finally:
        shutil.rmtree(neighbour)

    assert "pypi-stolen-token-value" not in done.stdout
    assert "OTHER_JOB" not in done.stdout
    assert done.stderr.count("No such file or directory") >= 2, done.stderr


def test_writes_land_in_the_workspace_only_and_stay_readable_by_the_worker(
    workspace: Path,
) -> None:
    outside = paths.home() / f"escaped-{workspace.name}"
    script = (
        f"id -u; echo result > {workspace}/written.txt; "
        f"echo x > {outside}; echo x > /escaped || echo refused-root; "
        "echo x > /usr/escaped || echo refused-usr; "
        "echo x > /tmp/scratch && echo tmp-ok"
    )

    done = run_boxed(Sandbox(workspace), ["/bin/sh", "-c", script])

    lines = done.stdout.split()
    assert lines[0] == str(SANDBOX_UID), done.stderr
    assert {"refused-root", "refused-usr", "tmp-ok"} <= set(lines), done.stderr
    # $CICD_HOME lies under the host's /tmp here: in the box that is its own tmpfs,
    # so the write went there and vanished with it.
    assert not outside.exists() and not Path("/usr/escaped").exists()
    assert not Path("/escaped").exists()
    # Not the host's /tmp: the box had its own.
    assert not Path("/tmp/scratch").exists() or Path("/tmp/scratch").read_text() != "x\n"
    written = workspace / "written.txt"
    assert written.read_text() == "result\n"
    assert written.stat().st_uid == os.getuid()


def test_the_worker_secrets_and_control_plane_variables_stay_out(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setenv("PYPI_TOKEN", "pypi-worker-token")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-worker-key")
    monkeypatch.setenv("MY_SECRET_THING", "worker-secret")
    given = {**os.environ, "PATH": "/usr/bin", "OPENAI_API_KEY": "gateway-client-key"}

    done = run_boxed(Sandbox(workspace), ["/usr/bin/env"], given)

    seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert "PREFECT_API_URL" not in seen and "PYPI_TOKEN" not in seen
    assert "MY_SECRET_THING" not in seen
    # What the step itself gives is passed on (the gateway's key, not the worker's).
    assert seen["OPENAI_API_KEY"] == "gateway-client-key"
    assert seen["HOME"] == "/tmp"
    assert job_environment({"A_TOKEN": "x"}, {"A_TOKEN": "x"}) == {}


DAEMON = textwrap.dedent(
    """
    import os, signal, sys, time
    marker, pid_file, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.execv(sys.executable, [sys.executable, "-c",
                "import signal, time, pathlib, os, sys\\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
                "pathlib.Path(sys.argv[2]).write_text(str(os.getpid()))\\n"
                "time.sleep(600)", marker, pid_file])
        os._exit(0)
    while not os.path.exists(pid_file):
        time.sleep(0.02)
    time.sleep(hold)
    """
)


def daemon_argv(workspace: Path, marker: str, hold: float) -> list[str]:
    return [SYSTEM_PYTHON, "-c", DAEMON, marker, str(workspace / "daemon.pid"), str(hold)]


def test_a_setsid_daemon_ignoring_sigterm_dies_with_its_job(workspace: Path) -> None:
    marker = f"cicd-daemon-{uuid.uuid4().hex}"
    sandbox = Sandbox(workspace)
    with sandbox:
        argv, env = sandbox.wrap(daemon_argv(workspace, marker, hold=1.0), {"PATH": "/usr/bin"})
        job = subprocess.Popen(argv, env=env, start_new_session=True)
        try:
            end = time.monotonic() + 30
            while not (workspace / "daemon.pid").exists() and time.monotonic() < end:
                time.sleep(0.05)
            alive_during = host_processes_with(marker)
            assert job.wait(timeout=30) == 0
        finally:
            if job.poll() is None:
                os.killpg(job.pid, 9)
                job.wait()

    # The daemon ran (the host saw it), and is gone once the job returned.
    assert alive_during, "the daemon never started"
    # Its own PID, as it saw it, is not the host's: it lived in the box's namespace.
    assert int((workspace / "daemon.pid").read_text()) not in alive_during
    time.sleep(0.2)
    assert host_processes_with(marker) == []


def test_a_timed_out_step_leaves_no_daemon_behind(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CICD_SANDBOX", "required")
    marker = f"cicd-daemon-{uuid.uuid4().hex}"

    step = run_step(
        "pytest",
        daemon_argv(workspace, marker, hold=600),
        cwd=workspace,
        env={"PATH": "/usr/bin"},
        deadline=Deadline(3),
    )

    assert step.timed_out
    assert (workspace / "daemon.pid").exists()
    time.sleep(0.2)
    assert host_processes_with(marker) == []


def test_without_the_box_the_same_daemon_survives_its_process_group(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: what the box fixes (the daemon's PID is the host's here)."""
    monkeypatch.setenv("CICD_SANDBOX", "off")
    marker = f"cicd-daemon-{uuid.uuid4().hex}"

    step = run_step(
        "pytest",
        daemon_argv(workspace, marker, hold=0),
        cwd=workspace,
        env={"PATH": "/usr/bin"},
        deadline=Deadline(30),
    )
    survivor = int((workspace / "daemon.pid").read_text())
    try:
        assert step.ok
        assert host_processes_with(marker) == [survivor]
    finally:
        os.kill(survivor, 9)


def test_a_step_reaches_its_services_but_not_the_prefect_api(
    workspace: Path, echo_servers: list[EchoServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, prefect_api = echo_servers
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{prefect_api.port}/api")
    # A cicd.yaml may name any port in a suite's env: only what we serve is bridged.
    env = {
        "PATH": "/usr/bin",
        "NEO4J_URI": f"bolt://127.0.0.1:{service.port}",
        "SNOOP": f"http://127.0.0.1:{prefect_api.port}/api",
        "SCAN": "http://127.0.0.1:22/",
    }
    assert step_sandbox([], workspace, env).allow_ports == (service.port,)
    probe = (
        f"exec('''{connect_code(service.port)}''');exec('''{connect_code(prefect_api.port)}''')"
    )

    step = run_step(
        "probe", [SYSTEM_PYTHON, "-c", probe], cwd=workspace, env=env, deadline=Deadline(60)
    )

    assert step.ok, step.output_tail
    assert step.output_tail.splitlines() == ["echo:ping", "refused: ConnectionRefusedError"]


@pytest.mark.slow
def test_a_real_pytest_suite_passes_confined_in_the_sample_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CICD_SANDBOX", "required")
    workspace = paths.workspaces() / f"agentkit-{uuid.uuid4().hex[:8]}"
    shutil.copytree(SAMPLE, workspace, ignore=shutil.ignore_patterns("__pycache__", ".*_cache"))
    # A target test that looks around: it must find only its own box.
    (workspace / "tests" / "unit" / "test_looks_around.py").write_text(
        textwrap.dedent(
            f"""
            import os

            def test_sees_only_its_box():
                assert "PREFECT_API_URL" not in os.environ
                assert not os.path.exists({str(paths.mirrors())!r})
                assert max(int(p) for p in os.listdir("/proc") if p.isdigit()) < 50
                assert os.getuid() == {SANDBOX_UID}
            """
        )
    )
    reports = paths.runs() / f"confined-{workspace.name}" / "reports"
    reports.mkdir(parents=True)
    try:
        env = ensure_environment(workspace, EnvironmentConfig(extras=["dev"]))
        suite = SuiteConfig(paths=["tests/unit"], coverage=["src/agentkit"], timeout=300)

        result = run_suite("unit", workspace, env, suite, reports, Deadline(suite.timeout))

        assert result.state.ok, (result.reason, result.steps[0].output_tail)
        assert result.tests is not None and result.tests.failed == 0
        assert result.tests.passed >= 2
        assert result.coverage_percent is not None and result.coverage_percent > 0
        assert (reports / "junit-unit.xml").stat().st_uid == os.getuid()
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
        shutil.rmtree(reports.parent, ignore_errors=True)


def test_the_reason_is_given_when_bwrap_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    availability = Sandbox.available()
    assert not availability.ok and "bubblewrap is not installed" in availability.reason


def test_required_refuses_to_run_unconfined_and_auto_runs_with_a_filtered_env(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYPI_TOKEN", "pypi-worker-token")
    env = {"PATH": "/usr/bin:/bin", "PYPI_TOKEN": "pypi-worker-token"}
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CICD_SANDBOX", "required")
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        run_step("env", ["/usr/bin/env"], cwd=workspace, env=env, deadline=Deadline(30))

    monkeypatch.setenv("CICD_SANDBOX", "auto")
    step = run_step("env", ["/usr/bin/env"], cwd=workspace, env=env, deadline=Deadline(30))
    assert step.ok and "PATH=/usr/bin:/bin" in step.output_tail
    assert "pypi-worker-token" not in step.output_tail

    monkeypatch.setenv("CICD_SANDBOX", "sometimes")
    with pytest.raises(BadInput, match="CICD_SANDBOX: expected one of auto, required, off"):
        run_step("env", ["/usr/bin/env"], cwd=workspace, env=env, deadline=Deadline(30))


def test_a_step_cannot_widen_its_own_view_through_its_env_or_args(workspace: Path) -> None:
    """``tests.*.env`` and ``tests.*.args`` come from the repository: they open nothing."""
    other = paths.workspaces() / f"other-{workspace.name}"
    site = workspace.with_name(f"{workspace.name}.site-py3.11")
    environment = paths.environments() / f"py3.11-{workspace.name}"
    run_reports = paths.runs() / f"pr-validation-{workspace.name}" / "reports"
    for path in (other, site, environment / "lib", run_reports):
        path.mkdir(parents=True)
    try:
        env = {
            "VIRTUAL_ENV": str(environment),
            "PYTHONPATH": os.pathsep.join([str(workspace), str(site), str(other), "/root"]),
        }
        argv = [
            f"--junitxml={run_reports}/junit-unit.xml",
            f"--cov-report=json:{paths.runs()}/stolen.json",
            f"--basetemp={paths.home()}/mirrors",
        ]

        sandbox = step_sandbox(argv, workspace, env)

        assert set(sandbox.read_only) == {environment.resolve(), site.resolve()}
        assert sandbox.writable == (run_reports.resolve(),)
    finally:
        for path in (other, site, environment, run_reports.parent):
            shutil.rmtree(path, ignore_errors=True)


HUNTER = textwrap.dedent(
    """
    import json, os, re, sys, urllib.request
    known_port = int(sys.argv[1])
    found = {"processes": [], "listening": [], "answers": [], "env": sorted(os.environ)}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            found["processes"].append(open(f"/proc/{pid}/cmdline").read().replace("\\0", " "))
        except OSError:
            pass
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in open(table).readlines()[1:]:
            fields = row.split()
            if fields[3] == "0A":
                found["listening"].append(int(fields[1].rsplit(":", 1)[1], 16))
    ports = {known_port}
    if sys.argv[2] == "scan":
        ports.update(found["listening"])
        for line in found["processes"]:
            ports.update(int(p) for p in re.findall(r"--port\\s+(\\d+)", line))
    for port in sorted(ports):
        body = json.dumps({"include_secrets": True}).encode()
        url = f"http://127.0.0.1:{port}/api/block_documents/filter"
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                found["answers"].append([port, response.status, response.read().decode()])
        except Exception as exc:
            found["answers"].append([port, type(exc).__name__, ""])
    print(json.dumps(found))
    """
)


@pytest.mark.slow
def test_a_target_test_hunting_for_the_prefect_api_finds_nothing(
    workspace: Path, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import urllib.parse

    from prefect.blocks.system import Secret

    monkeypatch.setenv("CICD_SANDBOX", "required")
    stolen = f"sk-index-token-{uuid.uuid4().hex}"
    Secret(value=stolen).save(f"hunted-{uuid.uuid4().hex[:8]}")  # type: ignore[arg-type]
    api_port = urllib.parse.urlsplit(prefect_server).port
    assert api_port is not None
    # From the host the API hands the secret out: that is what the box must prevent.
    # (Told the port, not scanning: on a shared machine the host has other servers.)
    hunt_argv = [SYSTEM_PYTHON, "-c", HUNTER, str(api_port)]
    unboxed = subprocess.run(
        [*hunt_argv, "known"], capture_output=True, text=True, timeout=120
    )
    assert stolen in unboxed.stdout

    step = run_step(
        "pytest",
        [*hunt_argv, "scan"],
        cwd=workspace,
        env={**os.environ, "PATH": "/usr/bin"},
        deadline=Deadline(120),
    )

    assert step.ok, step.output_tail
    found = json.loads(step.output_tail.splitlines()[-1])
    assert stolen not in step.output_tail
    assert found["listening"] == []
    assert found["answers"] == [[api_port, "URLError", ""]]
    assert not any("prefect" in line for line in found["processes"])
    assert not [name for name in found["env"] if name.startswith(("PREFECT_", "CICD_"))]
