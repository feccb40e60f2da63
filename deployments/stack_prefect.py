"""What the local stack registers on its Prefect server, through Prefect's
client (imported inside each function: ``cicd --help`` must not import Prefect):
the process work pool, global concurrency limits, the deployments of
``prefect.yaml``, and the cancellation of runs stopped workers left behind.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cicd import command
from cicd.errors import BadInput, InfrastructureError
from deployments.stack_auth import auth_string_for, client_env
from deployments.stack_processes import (
    LOG_TAIL_LINES,
    PREFECT_FILE,
    deploy_argv,
    deploy_env,
    log_tail,
)
from deployments.stack_state import ProcessRecord, StopResult, is_running

WORK_POOL = "cicd-process"
DEPLOY_TIMEOUT = 900.0


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



@contextlib.contextmanager
def _client(api_url: str) -> Iterator[Any]:
    from prefect.client.orchestration import SyncPrefectClient

    # An explicit client reads no settings: it needs the API password given.
    with SyncPrefectClient(api_url, auth_string=auth_string_for(api_url)) as client:
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
    api_url: str,
    project_dir: Path,
    repo: str,
    log: Path,
    auth: str | None = None,
    prefect_file: str = PREFECT_FILE,
    extra_env: Mapping[str, str] | None = None,
) -> None:
    """``prefect --no-prompt deploy --all`` from the project directory;
    ``extra_env``: more values for its ``{{ $VAR }}`` placeholders."""
    result = command.run(
        deploy_argv(prefect_file),
        cwd=project_dir,
        env={**deploy_env(api_url, project_dir, repo), **(extra_env or {}), **client_env(auth)},
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
                    f"{log_tail(Path(record.log))}"
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


