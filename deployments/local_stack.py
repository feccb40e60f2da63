"""The local Prefect stack behind ``cicd up`` / ``cicd down``: a Prefect server
(SQLite under ``$CICD_HOME``), the ``cicd-process`` work pool, the deployments
of ``prefect.yaml``, the Neo4j global concurrency limit and process workers.

Everything started is recorded in ``$CICD_HOME/local-server/``: one pid file
per process (``server.pid``, ``worker-1.pid``, ...) and ``state.json`` with the
API address and, per process, its kernel start time. ``down`` stops only those
processes, by process group, after checking that the pid still belongs to the
process we started (a pid can be reused after a reboot or a crash); nothing is
ever looked up by name.

Workers stop before the server: a worker whose server is already gone hangs on
SIGTERM until a second signal (shared notes, pitfall 15).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cicd import command, paths
from cicd.errors import BadInput, InfrastructureError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
WORK_POOL = "cicd-process"
# The worker's poll interval: the default 10 s adds up to 10 s to every run start.
WORKER_QUERY_SECONDS = "2"
PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_FILE = "prefect.yaml"
SERVER_START_TIMEOUT = 180.0
DEPLOY_TIMEOUT = 900.0
WORKER_READY_TIMEOUT = 120.0
STOP_GRACE_SECONDS = 20.0
STATE_FILE = "state.json"
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class ProcessRecord:
    """One process started by ``up``: enough to find it again, and only it."""

    role: str
    pid: int
    start_time: int | None
    argv: list[str]
    log: str

    @property
    def pid_file(self) -> str:
        return f"{self.role}.pid"


@dataclass
class StackState:
    api_url: str
    host: str
    port: int
    processes: list[ProcessRecord] = field(default_factory=list)

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api") + "/"

    def role(self, role: str) -> ProcessRecord | None:
        return next((p for p in self.processes if p.role == role), None)

    def workers(self) -> list[ProcessRecord]:
        return [p for p in self.processes if p.role.startswith("worker-")]


@dataclass(frozen=True)
class UpResult:
    api_url: str
    ui_url: str
    server: ProcessRecord | None  # None with --server-url
    workers: list[ProcessRecord]
    deployments: list[str]
    reused: list[str]


@dataclass(frozen=True)
class StopResult:
    role: str
    pid: int
    # "stopped", "killed" (needed SIGKILL) or "gone" (not running any more).
    outcome: str


# --- state on disk -------------------------------------------------------------


def state_dir() -> Path:
    path = paths.home() / "local-server"
    path.mkdir(parents=True, exist_ok=True)
    return path


def api_url_for(host: str, port: int) -> str:
    # A server bound to all interfaces is still reached through loopback here.
    reach = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in reach and not reach.startswith("["):
        reach = f"[{reach}]"
    return f"http://{reach}:{port}/api"


def read_state(directory: Path | None = None) -> StackState | None:
    path = (directory or state_dir()) / STATE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return StackState(
            api_url=raw["api_url"],
            host=raw["host"],
            port=int(raw["port"]),
            processes=[ProcessRecord(**p) for p in raw["processes"]],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{path}: unreadable state of the local stack ({exc}); delete it") from None


def write_state(state: StackState, directory: Path | None = None) -> None:
    directory = directory or state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for pid_file in directory.glob("*.pid"):
        if pid_file.name not in {p.pid_file for p in state.processes}:
            pid_file.unlink()
    for record in state.processes:
        # Plain pid files, so `kill "$(cat server.pid)"` works for a human too.
        (directory / record.pid_file).write_text(f"{record.pid}\n", encoding="utf-8")
    data = {**asdict(state), "ui_url": state.ui_url}
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(directory / STATE_FILE)


def clear_state(directory: Path | None = None) -> None:
    directory = directory or state_dir()
    for path in [*directory.glob("*.pid"), directory / STATE_FILE]:
        path.unlink(missing_ok=True)


def configured_api_url() -> str | None:
    """The API to talk to: ``PREFECT_API_URL`` if set, else the stack ``cicd up`` started."""
    explicit = os.environ.get("PREFECT_API_URL")
    if explicit:
        return explicit
    state = read_state()
    return state.api_url if state is not None else None


# --- process identity ----------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rfind(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks since boot); None without /proc."""
    fields = _proc_stat(pid)
    # Field 22 of stat; index 19 once pid and comm are removed.
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def is_running(record: ProcessRecord) -> bool:
    """True while the recorded process is alive and is still the one we started."""
    with contextlib.suppress(ChildProcessError, OSError):
        # Reap it if it is our own child (in-process callers, tests): a zombie
        # still answers signal 0.
        os.waitpid(record.pid, os.WNOHANG)
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: the pid was reused
    fields = _proc_stat(record.pid)
    if fields is None:
        return True  # no /proc (not Linux): the signal check is all there is
    if fields[0] == "Z":
        return False
    return record.start_time is None or process_start_time(record.pid) == record.start_time


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_process(record: ProcessRecord, grace: float = STOP_GRACE_SECONDS) -> StopResult:
    """SIGTERM the record's process group, SIGKILL it after ``grace`` seconds.

    Each process was started as the leader of its own session, so its group id
    is its pid and the group holds what it started itself (Prefect's server
    runs its services in child processes).
    """
    if not is_running(record):
        return StopResult(record.role, record.pid, "gone")
    try:
        leads_group = os.getpgid(record.pid) == record.pid
    except ProcessLookupError:
        return StopResult(record.role, record.pid, "gone")

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if leads_group:
                os.killpg(record.pid, sig)
            else:
                os.kill(record.pid, sig)

    def gone() -> bool:
        return not is_running(record) and not (leads_group and _group_alive(record.pid))

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if gone():
            return StopResult(record.role, record.pid, "stopped")
        time.sleep(0.1)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not gone():
        time.sleep(0.05)
    return StopResult(record.role, record.pid, "killed")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc; empty where there is none)."""
    children: list[int] = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(int(entry.name))
        if fields is not None and len(fields) > 1 and fields[1] == str(pid):
            children.append(int(entry.name))
    return children


# --- commands and environments -------------------------------------------------


def prefect_executable() -> str:
    """The ``prefect`` script of the interpreter running cicd, so the server,
    the deploy and the workers all use the same installation."""
    beside = Path(sys.executable).parent / "prefect"
    if beside.is_file():
        return str(beside)
    found = shutil.which("prefect")
    if found is None:
        raise InfrastructureError("the prefect command is not installed next to cicd")
    return found


def server_argv(host: str, port: int) -> list[str]:
    return [prefect_executable(), "server", "start", "--host", host, "--port", str(port)]


def worker_argv(pool: str, name: str) -> list[str]:
    return [
        prefect_executable(),
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        name,
    ]


def deploy_argv(prefect_file: str = PREFECT_FILE) -> list[str]:
    return [prefect_executable(), "--no-prompt", "deploy", "--all", "--prefect-file", prefect_file]


def base_env(api_url: str, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every process of the stack gets: the caller's, pointed at our API."""
    env = dict(os.environ if source is None else source)
    env["PREFECT_API_URL"] = api_url
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # A profile selecting another server must not win over the variable above.
    env.pop("PREFECT_PROFILE", None)
    return env


def server_env(api_url: str, home: Path, source: Mapping[str, str] | None = None) -> dict[str, str]:
    env = base_env(api_url, source)
    # The server's own PREFECT_HOME holds its SQLite database: it lives and
    # dies with the stack and never touches the user's ~/.prefect.
    env["PREFECT_HOME"] = str(home)
    return env


def worker_env(
    api_url: str, cicd_home: Path, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Flow runs inherit the worker's environment: pin the state directory and
    the Neo4j jar cache so deployment runs find what ``cicd run`` finds."""
    env = base_env(api_url, source)
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", WORKER_QUERY_SECONDS)
    env["CICD_HOME"] = str(cicd_home)
    return env


def deploy_env(
    api_url: str, project_dir: Path, repo: str, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``prefect deploy`` resolves ``{{ $VAR }}`` placeholders of prefect.yaml from here."""
    env = base_env(api_url, source)
    env["CICD_PROJECT_DIR"] = str(project_dir)
    env["CICD_REPO"] = repo
    return env


def deployment_names(project_dir: Path, prefect_file: str = PREFECT_FILE) -> list[str]:
    """The deployment names declared in prefect.yaml, in file order."""
    path = project_dir / prefect_file
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: not valid YAML ({exc})") from None
    deployments = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(deployments, list) or not deployments:
        raise BadInput(f"{path}: 'deployments' must be a non-empty list")
    names: list[str] = []
    for index, item in enumerate(deployments):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise BadInput(f"{path}: deployments[{index}].name is missing")
        names.append(name)
    return names


# --- waiting -------------------------------------------------------------------


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def wait_for_health(api_url: str, timeout: float, alive: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api_healthy(api_url):
            return
        if not alive():
            raise InfrastructureError(
                f"the Prefect server exited before answering {api_url}/health; "
                f"its log ({log}) ends:\n{_log_tail(log)}"
            )
        time.sleep(0.25)
    raise InfrastructureError(
        f"the Prefect server did not answer {api_url}/health within {timeout:.0f}s; "
        f"its log ({log}) ends:\n{_log_tail(log)}"
    )


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# --- starting ------------------------------------------------------------------


def spawn(
    role: str, argv: Sequence[str], env: Mapping[str, str], directory: Path, cwd: Path | None = None
) -> ProcessRecord:
    """Start a long-lived process in its own session with its output in ``<role>.log``."""
    log_path = directory / f"{role}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ProcessRecord(
        role=role,
        pid=proc.pid,
        start_time=process_start_time(proc.pid),
        argv=list(argv),
        log=str(log_path),
    )


@contextlib.contextmanager
def _client(api_url: str) -> Iterator[Any]:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api_url) as client:
        yield client


def ensure_work_pool(api_url: str, name: str = WORK_POOL) -> bool:
    """Create the process work pool with Prefect's default job template; False if it existed.

    An existing pool is left alone: an operator may have tuned its concurrency.
    """
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with _client(api_url) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        except ObjectAlreadyExists:
            return False
    return True


def ensure_concurrency_limit(api_url: str, name: str, limit: int) -> bool:
    """Create a global concurrency limit if missing; False if it existed (left as is)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with _client(api_url) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )
        except ObjectAlreadyExists:
            return False
    return True


def deployed_names(api_url: str) -> list[str]:
    """Every deployment on the server as ``flow/deployment``."""
    with _client(api_url) as client:
        deployments = client.read_deployments()
        flows = {flow.id: flow.name for flow in client.read_flows()}
    return sorted(f"{flows.get(d.flow_id, '?')}/{d.name}" for d in deployments)


def deploy(
    api_url: str, project_dir: Path, repo: str, log: Path, prefect_file: str = PREFECT_FILE
) -> None:
    """``prefect --no-prompt deploy --all`` from the project directory."""
    result = command.run(
        deploy_argv(prefect_file),
        cwd=project_dir,
        env=deploy_env(api_url, project_dir, repo),
        timeout=DEPLOY_TIMEOUT,
        log_path=log,
    )
    if not result.ok:
        why = "timed out" if result.timed_out else f"exited with {result.returncode}"
        raise InfrastructureError(f"prefect deploy {why}:\n{result.tail(LOG_TAIL_LINES)}")


def wait_for_workers(
    api_url: str, pool: str, names: Sequence[str], timeout: float, records: Sequence[ProcessRecord]
) -> None:
    """Wait until every named worker has sent a heartbeat to the server."""
    from prefect.client.schemas.objects import WorkerStatus

    deadline = time.monotonic() + timeout
    missing = set(names)
    while time.monotonic() < deadline:
        for record in records:
            if not is_running(record):
                raise InfrastructureError(
                    f"worker {record.role} exited during start; its log ({record.log}) ends:\n"
                    f"{_log_tail(Path(record.log))}"
                )
        with _client(api_url) as client:
            online = {
                w.name
                for w in client.read_workers_for_work_pool(pool)
                if w.status == WorkerStatus.ONLINE
            }
        missing = set(names) - online
        if not missing:
            return
        time.sleep(0.5)
    raise InfrastructureError(
        f"workers {sorted(missing)} did not come online within {timeout:.0f}s"
    )


def worker_name(index: int) -> str:
    return f"cicd-local-{socket.gethostname()}-{index}"


def up(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = 1,
    repo: str | None = None,
    server_url: str | None = None,
    project_dir: Path = PROJECT_DIR,
    run_deploy: bool = True,
    progress: Callable[[str], None] = lambda _line: None,
) -> UpResult:
    """Start (or reuse) the local server, then the pool, limit, deployments and workers.

    ``server_url`` (an API address ending in ``/api``) uses a running server
    instead of starting one: the production set-up (deployments/) runs
    ``cicd up --server-url ... --workers 0`` once to register everything.

    Idempotent: a server or worker of an earlier ``up`` that is still running
    is kept. When a step fails, what this call started is stopped again, so a
    failed ``up`` leaves nothing behind.
    """
    if workers < 0:
        raise BadInput(f"--workers {workers}: expected a whole number >= 0")
    if not 0 < port < 65536:
        raise BadInput(f"--port {port}: expected 1-65535")
    directory = state_dir()
    state = read_state(directory)
    reused: list[str] = []
    started: list[ProcessRecord] = []
    running_server = state.role("server") if state is not None else None
    if running_server is not None and not is_running(running_server):
        running_server = None

    if server_url is not None:
        server_url = server_url.rstrip("/")
        if running_server is not None:
            raise BadInput(
                f"cicd up already runs a local server at {state.api_url if state else '?'} "
                f"(pid {running_server.pid}); run `cicd down` before using --server-url"
            )
        if not api_healthy(server_url, timeout=10):
            raise BadInput(f"--server-url {server_url}: no Prefect API answers {server_url}/health")
        if state is None or state.api_url != server_url:
            state = StackState(api_url=server_url, host="", port=0)
    elif running_server is not None and state is not None:
        if (state.host, state.port) != (host, port):
            raise BadInput(
                f"a local Prefect server started by cicd up is already running at "
                f"{state.api_url} (pid {running_server.pid}); run `cicd down` first to move it"
            )
        reused.append("server")
    else:
        state = StackState(api_url=api_url_for(host, port), host=host, port=port)
    api_url = state.api_url
    # Drop records of processes that are gone (crashed, rebooted).
    state.processes = [p for p in state.processes if is_running(p)]

    try:
        if server_url is None and "server" not in reused:
            if not port_is_free(host, port):
                raise BadInput(f"port {port} on {host} is already in use; pick another with --port")
            progress(f"starting the Prefect server on {api_url} ...")
            record = spawn(
                "server",
                server_argv(host, port),
                server_env(api_url, directory / "prefect-home"),
                directory,
            )
            started.append(record)
            state.processes.append(record)
            write_state(state, directory)
            wait_for_health(
                api_url, SERVER_START_TIMEOUT, lambda: is_running(record), Path(record.log)
            )

        if ensure_work_pool(api_url):
            progress(f"created work pool {WORK_POOL}")

        # Imported here: tasks.services pulls in the service backends.
        from tasks.services import NEO4J_LIMIT, max_servers

        if ensure_concurrency_limit(api_url, NEO4J_LIMIT, max_servers()):
            progress(f"created global concurrency limit {NEO4J_LIMIT} = {max_servers()}")

        if run_deploy:
            if repo is None:
                from cicd.sample import default_sample_repo

                repo = os.environ.get("CICD_REPO") or str(default_sample_repo())
            progress(f"deploying {', '.join(deployment_names(project_dir))} ...")
            deploy(api_url, project_dir, repo, directory / "deploy.log")

        new_workers: list[ProcessRecord] = []
        for index in range(1, workers + 1):
            role = f"worker-{index}"
            existing = state.role(role)
            if existing is not None and is_running(existing):
                reused.append(role)
                continue
            record = spawn(
                role,
                worker_argv(WORK_POOL, worker_name(index)),
                worker_env(api_url, paths.home()),
                directory,
                cwd=project_dir,
            )
            started.append(record)
            new_workers.append(record)
            state.processes.append(record)
            write_state(state, directory)
        if new_workers:
            progress(f"starting {len(new_workers)} worker(s) on {WORK_POOL} ...")
            wait_for_workers(
                api_url,
                WORK_POOL,
                [worker_name(int(r.role.split("-")[1])) for r in new_workers],
                WORKER_READY_TIMEOUT,
                new_workers,
            )
        names = deployed_names(api_url)
    except BaseException:
        _stop_records(started)
        state.processes = [p for p in state.processes if p not in started]
        if state.processes:
            write_state(state, directory)
        else:
            clear_state(directory)
        raise

    if state.processes:
        write_state(state, directory)
    return UpResult(
        api_url=api_url,
        ui_url=state.ui_url,
        server=state.role("server"),
        workers=state.workers(),
        deployments=names,
        reused=reused,
    )


def _stop_records(records: Sequence[ProcessRecord]) -> list[StopResult]:
    # Workers first, then the server (shared notes, pitfall 15).
    ordered = sorted(records, key=lambda r: r.role == "server")
    results: list[StopResult] = []
    for record in ordered:
        flow_runs: list[int] = []
        if record.role != "server" and is_running(record):
            # Flow runs are sessions of their own: the worker's group does not hold them.
            flow_runs = child_pids(record.pid)
        results.append(stop_process(record))
        for pid in flow_runs:
            results.append(_stop_flow_run(record.role, pid))
    return results


def _stop_flow_run(owner: str, pid: int) -> StopResult:
    """Stop a flow-run process a worker left behind, if it is still there."""
    record = ProcessRecord(
        role=f"{owner}-run", pid=pid, start_time=process_start_time(pid), argv=[], log=""
    )
    return stop_process(record, grace=10.0)


def cancel_orphaned_runs(api_url: str, pool: str = WORK_POOL) -> list[StopResult]:
    """Mark the runs our stopped workers left Pending/Running/Cancelling as Cancelled.

    A worker stopped by SIGTERM kills its flow-run processes, but nobody
    reports their end: the UI would show them running forever. Scheduled runs
    are kept: the next ``cicd up`` runs them.
    """
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    active = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    results: list[StopResult] = []
    with _client(api_url) as client:
        runs = client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active))
            ),
        )
        for run in runs:
            client.set_flow_run_state(run.id, Cancelled(message="stopped by cicd down"), force=True)
            results.append(StopResult(f"run {run.name}", run.infrastructure_pid or 0, "cancelled"))
    return results


def down() -> list[StopResult]:
    """Stop everything ``up`` started (workers before the server) and forget it."""
    directory = state_dir()
    state = read_state(directory)
    if state is None:
        return []
    server = state.role("server")
    results = _stop_records([p for p in state.processes if p is not server])
    if server is not None and is_running(server):
        # Only on our own server: on a shared one (--server-url) other workers'
        # runs are in the same pool.
        try:
            results.extend(cancel_orphaned_runs(state.api_url))
        except Exception as exc:  # the server must still be stopped
            results.append(StopResult(f"cancelling runs failed: {exc}", 0, "skipped"))
        results.append(stop_process(server))
    clear_state(directory)
    return results
