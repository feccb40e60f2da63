"""Several workers on one Prefect server on PostgreSQL, as separate machines
would run them (issue 16: "Scale out on a real distributed engine").

The server runs on a throwaway PostgreSQL behind basic auth and is registered
the way the compose file's ``register`` service does it (``cicd up
--server-url ... --workers 0``: work pool, limits, deployments, result
storage). Each worker is a ``prefect worker start --limit N`` of its own
(``deployments.stack_processes.worker_argv``) with its own ``PREFECT_HOME``
and ``PREFECT_LOCAL_STORAGE_PATH``; they share only the server and one
``CICD_HOME`` (the compose file's ``cicd-cache`` volume). Used by
``tests/test_scale_out.py`` and ``bench/scale_out.py``.

The sample's light variant (branch ``scale-base``): the unit suite and ruff
only, no Neo4j, so twenty runs fit in a few minutes on two cores.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from cicd.runs import JOURNAL, read_journal
from deployments.stack_prefect import WORK_POOL
from deployments.stack_processes import log_tail, spawn, stop_process, worker_argv, worker_env
from deployments.stack_state import ProcessRecord, child_pids, is_running, process_start_time
from tests.conftest import (
    BIN,
    REPO_ROOT,
    client_environment,
    free_port,
    stop_process_group,
    wait_for_http,
)
from tests.postgres_fixture import PostgresServer, prefect_server_environment
from tests.sample_repos import FAILING_TEST, LINT_ERROR, commit_on_branch

DEPLOYMENT = "pr-validation/pr-validation"
LIGHT_BASE = "scale-base"
WORKER_READY_TIMEOUT = 180.0
REGISTER_TIMEOUT = 900.0
# The job task runs of the PR flow (tasks/job_runner.py names them after their jobs).
JOB_NAMES = frozenset({"quality", "unit", "framework"})


def make_light_branches(
    repo: Path, green: int, red_test: int, red_lint: int, prefix: str = "scale"
) -> dict[str, bool]:
    """Branches off the light variant, each with a commit (and files) of its own,
    named ``<prefix>-green-<i>``, ``-red-test-<i>``, ``-red-lint-<i>``; ref -> passes."""
    with commit_on_branch(repo, LIGHT_BASE, "ci: unit suite and ruff only (no Neo4j)"):
        config = repo / "cicd.yaml"
        text = config.read_text()
        text = text.replace("suites: [unit, framework]", "suites: [unit]", 1)
        text = text.replace("  mypy: {paths: [src/agentkit]}\n", "", 1)
        text = text.replace("  black: {paths: [src, tests]}\n", "", 1)
        config.write_text(text)
    token = secrets.token_hex(3)  # a fresh commit per session: nothing cached yet
    expected: dict[str, bool] = {}
    for index in range(green):
        ref = f"{prefix}-green-{index}"
        with commit_on_branch(repo, ref, f"feat: green change {index}", base=LIGHT_BASE):
            (repo / "src" / "agentkit" / f"{prefix.replace('-', '_')}_{index}.py").write_text(
                f'"""Change {index} ({token})."""\n'
            )
        expected[ref] = True
    for index in range(red_test):
        ref = f"{prefix}-red-test-{index}"
        with commit_on_branch(repo, ref, f"test: capitals {index}", base=LIGHT_BASE):
            (
                repo / "tests" / "unit" / f"test_{prefix.replace('-', '_')}_capitals_{index}.py"
            ).write_text(FAILING_TEST + f"# {token}\n")
        expected[ref] = False
    for index in range(red_lint):
        ref = f"{prefix}-red-lint-{index}"
        with commit_on_branch(repo, ref, f"feat: an unused import {index}", base=LIGHT_BASE):
            (repo / "src" / "agentkit" / f"{prefix.replace('-', '_')}_lint_{index}.py").write_text(
                f'"""Lint {index} ({token})."""\n\n{LINT_ERROR}'
            )
        expected[ref] = False
    return expected


@dataclass
class Cluster:
    api_url: str
    auth: str
    root: Path
    shared_home: Path  # CICD_HOME of every worker (and of `register`)
    repo: Path
    limit: int
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: dict[str, ProcessRecord] = field(default_factory=dict)

    def client_env(self, name: str) -> dict[str, str]:
        """A machine of its own: PREFECT_HOME and local result path named ``name``."""
        env = client_environment(self.api_url, self.auth, self.root, name)
        env["CICD_HOME"] = str(self.shared_home)
        return env

    @contextmanager
    def client(self) -> Iterator[Any]:
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(self.api_url, auth_string=self.auth) as client:
            yield client

    def start_worker(self, name: str) -> ProcessRecord:
        env = {
            **worker_env(self.api_url, self.shared_home, self.client_env(name)),
            "PREFECT_API_AUTH_STRING": self.auth,
            # The worker's own log at INFO (submissions); its flow runs inherit it.
            "PREFECT_LOGGING_LEVEL": "INFO",
            **self.extra_env,
        }
        record = spawn(
            name, worker_argv(WORK_POOL, name, self.limit), env, self.root, cwd=REPO_ROOT
        )
        self.workers[name] = record
        return record

    def wait_for_workers(self, names: Iterable[str]) -> None:
        """Until each named worker has sent a heartbeat (a client with the password:
        ``stack_prefect.wait_for_workers`` reads it from this process's settings)."""
        from prefect.client.schemas.objects import WorkerStatus

        missing = set(names)
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while missing:
            for name in missing:
                if not is_running(self.workers[name]):
                    raise RuntimeError(
                        f"worker {name} exited: {log_tail(Path(self.workers[name].log))}"
                    )
            with self.client() as client:
                online = {
                    w.name
                    for w in client.read_workers_for_work_pool(WORK_POOL)
                    if w.status == WorkerStatus.ONLINE
                }
            missing -= online
            if missing and time.monotonic() > deadline:
                raise TimeoutError(
                    f"workers {sorted(missing)} not online in {WORKER_READY_TIMEOUT}s"
                )
            time.sleep(0.5)

    def stop_worker(self, name: str) -> None:
        """The worker's process group, then flow-run processes it left (own sessions)."""
        record = self.workers.pop(name)
        flow_runs = child_pids(record.pid)
        stop_process(record, grace=20.0)
        for pid in flow_runs:
            stop_process(
                ProcessRecord(f"{name}-run", pid, process_start_time(pid), [], ""), grace=10.0
            )

    def submit(self, refs: Iterable[str]) -> list[tuple[UUID, str, datetime]]:
        """One PR run per ref, created back to back; (id, ref, created)."""
        with self.client() as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            created = []
            for ref in refs:
                run = client.create_flow_run_from_deployment(
                    deployment.id, parameters={"repo": str(self.repo), "ref": ref}
                )
                created.append((run.id, ref, run.created))
        return created

    def wait_final(self, ids: Iterable[UUID], timeout: float) -> dict[UUID, Any]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        wanted = list(ids)
        deadline = time.monotonic() + timeout
        while True:
            with self.client() as client:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=wanted)),
                    limit=len(wanted),
                )
            done = {run.id: run for run in runs if run.state is not None and run.state.is_final()}
            if len(done) == len(wanted):
                return done
            if time.monotonic() > deadline:
                pending = {str(r.id): r.state_name for r in runs if r.id not in done}
                raise TimeoutError(f"{len(pending)} run(s) not final in {timeout:.0f}s: {pending}")
            time.sleep(2.0)

    def states(self, run_id: UUID) -> list[Any]:
        with self.client() as client:
            return list(client.read_flow_run_states(run_id))

    def job_states(self, run_id: UUID) -> dict[str, Any]:
        """The final Prefect state of each job task run (named after its job)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with self.client() as client:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
        return {t.name: t.state for t in task_runs if t.name in JOB_NAMES}

    def cached_origin(self, state: Any) -> str:
        """The flow run that computed a Cached job's result: the ``origin`` of the
        JobResult in the shared result storage, under the key the state points at."""
        from prefect.results import ResultRecord

        key = state.data.storage_key
        record = ResultRecord.deserialize((self.shared_home / "results" / key).read_bytes())
        return str(record.result.origin)

    def journal_lines(self, run_id: UUID) -> list[dict[str, Any]]:
        """Every line the run's jobs wrote (a job that ran twice would write two ends)."""
        path = self.shared_home / "runs" / f"pr-validation-{run_id}" / JOURNAL
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def journal(self, run_id: UUID) -> dict[str, dict[str, Any]]:
        """The run's jobs as its flow wrote them (``cicd.runs``), by job name."""
        directory = self.shared_home / "runs" / f"pr-validation-{run_id}"
        return {entry["name"]: entry for entry in read_journal(directory)}


def worker_of(run: Any) -> str:
    """The worker that submitted ``run``: Prefect labels a run with it at submission."""
    return str((run.labels or {}).get("prefect.worker.name", ""))


@contextmanager
def running_cluster(
    postgres: PostgresServer,
    root: Path,
    repo: Path,
    workers: int,
    limit: int,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """Server on PostgreSQL, registered, ``workers`` workers online; all stopped on exit."""
    database = postgres.create_database(f"prefect_{secrets.token_hex(4)}")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    auth = f"cicd:{secrets.token_urlsafe(24)}"
    cluster = Cluster(
        api_url, auth, root, root / "shared-cicd-home", repo, limit, dict(extra_env or {})
    )
    server_env = prefect_server_environment(database, auth, root / "server-home")
    with ExitStack() as stack:
        log = stack.enter_context((root / "server.log").open("wb"))
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack.callback(stop_process_group, server)
        wait_for_http(f"{api_url}/health", 240, server)
        register = subprocess.run(
            [str(BIN / "cicd"), "up", "--server-url", api_url, "--workers", "0"],
            env={**cluster.client_env("register"), **cluster.extra_env, "CICD_REPO": str(repo)},
            capture_output=True,
            text=True,
            timeout=REGISTER_TIMEOUT,
            check=False,
        )
        if register.returncode != 0:
            raise RuntimeError(f"cicd up --server-url failed: {register.stderr[-3000:]}")
        # Workers first on the way out (a worker whose server is gone hangs on SIGTERM).
        stack.callback(lambda: [cluster.stop_worker(n) for n in list(cluster.workers)])
        names = [f"scale-w{index}" for index in range(1, workers + 1)]
        for name in names:
            cluster.start_worker(name)
        cluster.wait_for_workers(names)
        yield cluster
