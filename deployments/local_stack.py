"""The local Prefect stack behind ``cicd up`` / ``cicd down``: a Prefect server
(SQLite under ``$CICD_HOME``), the ``cicd-process`` work pool, the deployments
of ``prefect.yaml``, the Neo4j global concurrency limit and process workers.

This module orchestrates; the parts live beside it: ``stack_state`` (what was
started, on disk, and whether a pid is still ours), ``stack_processes``
(spawning, waiting, stopping) and ``stack_prefect`` (what is registered on the
server). ``down`` stops only recorded processes, by process group, workers
before the server: a worker whose server is already gone hangs on SIGTERM
until a second signal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cicd import paths
from cicd.errors import BadInput
from deployments import crash_recovery
from deployments.stack_auth import (
    auth_string_for,
    client_env,
    forget_auth_string,
    new_auth_string,
    read_auth_string,
    register_secret,
    require_access,
    write_auth_string,
)
from deployments.stack_auth import server_env as auth_server_env
from deployments.stack_prefect import (
    DEPLOY_TIMEOUT,
    WORK_POOL,
    cancel_orphaned_runs,
    deploy,
    deployed_names,
    deployment_names,
    ensure_concurrency_limit,
    ensure_work_pool,
    wait_for_workers,
    worker_name,
)
from deployments.stack_processes import (
    PREFECT_FILE,
    STOP_GRACE_SECONDS,
    WORKER_QUERY_SECONDS,
    api_healthy,
    base_env,
    deploy_argv,
    deploy_env,
    port_is_free,
    prefect_executable,
    server_argv,
    server_env,
    spawn,
    stop_process,
    wait_for_health,
    worker_argv,
    worker_env,
)
from deployments.stack_results import ResultStorage, ensure_result_storage, results_path
from deployments.stack_state import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    STATE_FILE,
    ProcessRecord,
    StackState,
    StopResult,
    api_url_for,
    child_pids,
    clear_state,
    configured_api_url,
    is_running,
    process_start_time,
    read_state,
    state_dir,
    write_state,
)
from deployments.stack_workers import runs_per_worker as resolve_runs_per_worker

# Callers (the CLI, tests, the webhook) import these from here, as before the split.
__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEPLOY_TIMEOUT",
    "PREFECT_FILE",
    "PROJECT_DIR",
    "STATE_FILE",
    "STOP_GRACE_SECONDS",
    "WORKER_QUERY_SECONDS",
    "WORK_POOL",
    "ProcessRecord",
    "StackState",
    "StopResult",
    "UpResult",
    "api_healthy",
    "api_url_for",
    "base_env",
    "cancel_orphaned_runs",
    "child_pids",
    "clear_state",
    "configured_api_url",
    "deploy",
    "deploy_argv",
    "deploy_env",
    "deployed_names",
    "deployment_names",
    "down",
    "ensure_concurrency_limit",
    "ensure_work_pool",
    "is_running",
    "port_is_free",
    "prefect_executable",
    "process_start_time",
    "read_state",
    "server_argv",
    "server_env",
    "spawn",
    "state_dir",
    "stop_process",
    "up",
    "wait_for_health",
    "wait_for_workers",
    "worker_argv",
    "worker_env",
    "worker_name",
    "write_state",
]

PROJECT_DIR = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT = 180.0
WORKER_READY_TIMEOUT = 120.0
# Grace before SIGKILL when the server does not answer: a worker then hangs
# on SIGTERM anyway (it waits for its server), so waiting longer buys nothing.
HUNG_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class UpResult:
    api_url: str
    ui_url: str
    server: ProcessRecord | None  # None with --server-url
    workers: list[ProcessRecord]
    deployments: list[str]
    reused: list[str]
    # The server's default result storage: every worker's cache (stack_results).
    result_storage: ResultStorage | None = None



def up(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = 1,
    runs_per_worker: int | None = None,
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
    # Checked before anything starts: a bad value is bad input, not a half-made stack.
    recovery = crash_recovery.settings_from_env()
    run_limit = resolve_runs_per_worker(runs_per_worker)
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
        fresh = StackState(api_url=api_url_for(host, port), host=host, port=port)
        if state is not None:
            # The server is gone (crashed, killed) but its workers may live on:
            # keep tracking them, never start a second one beside them. Ours
            # pointed at another address are stopped: they would poll nothing.
            alive = [p for p in state.processes if p.role != "server" and is_running(p)]
            if state.api_url == fresh.api_url:
                fresh.processes = alive
            else:
                _stop_records(alive)
        state = fresh
    api_url = state.api_url
    auth = _auth_string(server_url, reused, directory)
    if server_url is not None:
        require_access(server_url, auth)
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
                {**server_env(api_url, directory / "prefect-home"), **auth_server_env(auth)},
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

        storage = ensure_result_storage(api_url, paths.home(), auth)
        if storage.changed:
            progress(f"result storage of every worker: {storage.slug}")

        # Imported here: tasks.services pulls in the service backends.
        from tasks.services import NEO4J_LIMIT, max_servers

        if ensure_concurrency_limit(api_url, NEO4J_LIMIT, max_servers()):
            progress(f"created global concurrency limit {NEO4J_LIMIT} = {max_servers()}")

        progress(
            "crash recovery: " + ", ".join(crash_recovery.ensure_automations(api_url, recovery))
        )

        if run_deploy:
            if repo is None:
                from cicd.sample import default_sample_repo

                repo = os.environ.get("CICD_REPO") or str(default_sample_repo())
            progress(f"deploying {', '.join(deployment_names(project_dir))} ...")
            deploy(
                api_url,
                project_dir,
                repo,
                directory / "deploy.log",
                auth,
                extra_env=crash_recovery.deploy_env(recovery),
            )

        new_workers: list[ProcessRecord] = []
        for index in range(1, workers + 1):
            role = f"worker-{index}"
            existing = state.role(role)
            if existing is not None and is_running(existing):
                reused.append(role)
                continue
            record = spawn(
                role,
                worker_argv(WORK_POOL, worker_name(index), run_limit),
                {
                    # Where results go should the server's default be cleared.
                    "PREFECT_LOCAL_STORAGE_PATH": str(results_path(paths.home())),
                    **worker_env(api_url, paths.home()),
                    **crash_recovery.worker_env(recovery),
                    **client_env(auth),
                },
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
            forget_auth_string(directory)
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
        result_storage=storage,
    )


def _auth_string(server_url: str | None, reused: list[str], directory: Path) -> str | None:
    """The API password of this stack (``stack_auth``), written before the server starts."""
    if server_url is not None:
        # Someone else's server: the caller's setting, as for any Prefect client.
        return auth_string_for(server_url)
    existing = read_auth_string(directory)
    if existing and ("server" in reused or not os.environ.get("PREFECT_API_AUTH_STRING")):
        # The running server's password, or that of a server that crashed: the
        # workers `up` keeps from before the crash authenticate with it (`down`
        # removes it, so a stack started afresh gets a new one).
        register_secret(existing)
        return existing
    auth = os.environ.get("PREFECT_API_AUTH_STRING") or new_auth_string()
    register_secret(auth)
    write_auth_string(auth, directory)
    return auth


def _stop_records(
    records: Sequence[ProcessRecord], grace: float = STOP_GRACE_SECONDS
) -> list[StopResult]:
    # Workers first, then the server (see the module docstring).
    ordered = sorted(records, key=lambda r: r.role == "server")
    results: list[StopResult] = []
    for record in ordered:
        flow_runs: list[int] = []
        if record.role != "server" and is_running(record):
            # Flow runs are sessions of their own: the worker's group does not hold them.
            flow_runs = child_pids(record.pid)
        results.append(stop_process(record, grace))
        for pid in flow_runs:
            results.append(_stop_flow_run(record.role, pid))
    return results


def _stop_flow_run(owner: str, pid: int) -> StopResult:
    """Stop a flow-run process a worker left behind, if it is still there."""
    record = ProcessRecord(
        role=f"{owner}-run", pid=pid, start_time=process_start_time(pid), argv=[], log=""
    )
    return stop_process(record, grace=10.0)



def down() -> list[StopResult]:
    """Stop everything ``up`` started (workers before the server) and forget it."""
    directory = state_dir()
    state = read_state(directory)
    if state is None:
        return []
    server = state.role("server")
    # A server that does not answer (hung, SIGSTOPped) gets no HTTP call that
    # could block, and its workers and itself a short grace: `down` is bounded.
    answers = server is not None and is_running(server) and api_healthy(state.api_url, 2.0)
    grace = STOP_GRACE_SECONDS if answers or server is None else HUNG_GRACE_SECONDS
    results = _stop_records([p for p in state.processes if p is not server], grace)
    if server is not None and is_running(server):
        # Only on our own server: on a shared one (--server-url) other workers'
        # runs are in the same pool.
        if answers:
            try:
                results.extend(cancel_orphaned_runs(state.api_url))
            except Exception as exc:  # the server must still be stopped
                results.append(StopResult(f"cancelling runs failed: {exc}", 0, "skipped"))
        else:
            results.append(StopResult("cancelling runs: the server does not answer", 0, "skipped"))
        results.append(stop_process(server, grace))
    clear_state(directory)
    forget_auth_string(directory)
    return results
