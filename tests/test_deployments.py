"""cicd-flows run the way Prefect users run it: ``cicd up`` (a real server, work
pool, ``prefect deploy --all`` of prefect.yaml, a real worker), ``prefect
deployment run`` of PR validation on the sample repository, the cron schedules,
cancel-in-progress between two real flow runs, ``cicd down``, the git poller on
real repositories, and ``cicd webhook`` as a process.

The stack of ``cicd up`` is shared by the tests of this module (module fixture)
and is stopped by ``cicd down`` in the last of them; the fixture's teardown
stops anything left by pid if that test failed. Runs that must not be executed
go to deployments without a work pool on the session server, where no worker
picks them up.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
import selectors
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cicd.errors import BadInput, InfrastructureError
from cicd.sample import commit_all, git
from deployments import local_stack as local_server
from flows.concurrency import RunInfo, cancel_older_runs, older_runs_in_group
from flows.git_poller import (
    PollTarget,
    RemoteRefs,
    diff_refs,
    ls_remote,
    parse_ls_remote,
    parse_targets,
    poll,
)
from tests.conftest import BIN, REPO_ROOT, free_port, stop_process_group

PIPELINES = {
    "pr-validation", "integration", "nightly", "release", "deploy", "cost-report", "git-poller"
}  # fmt: skip
CRONS = {"nightly/nightly": "0 2 * * *", "cost-report/cost-report": "0 9 * * 1"}


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cicd"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    # A zombie (exited, not yet reaped by its parent) is not running.
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def api(url: str) -> Iterator[Any]:
    from prefect.client.orchestration import SyncPrefectClient

    from deployments.stack_auth import auth_string_for

    # The stack's API password (deployments/stack_auth.py), as the CLI finds it.
    with SyncPrefectClient(url, auth_string=auth_string_for(url)) as client:
        yield client


# ------------------------------------------------------------------ prefect.yaml, compose


def test_prefect_yaml_deploys_every_flow_under_its_own_name() -> None:
    data = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in data["deployments"]}
    assert set(deployments) == PIPELINES
    for name, deployment in deployments.items():
        path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, function)
        # "<flow>/<flow>" is what cicd webhook and the git poller start.
        assert flow.name == name, deployment["entrypoint"]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters", {})) <= accepted, name
        assert deployment["work_pool"]["name"] == "cicd-process"
    for name in ("pr-validation", "integration"):
        assert {"repo", "ref", "base"} <= set(deployments[name]["parameters"])
    assert deployments["pr-validation"]["parameters"]["group"] is None
    assert data["pull"] == [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": "{{ $CICD_PROJECT_DIR }}"
            }
        }
    ]
    docker = data["definitions"]["work_pools"]["docker"]
    assert docker["name"] == "cicd-docker"
    assert docker["job_variables"]["image"]


def test_compose_file_has_the_production_shape() -> None:
    # No Docker engine (nor compose) here: the file is checked as YAML, not started.
    compose = yaml.safe_load((REPO_ROOT / "deployments" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "register", "worker", "webhook"} <= set(services)

    server = services["prefect-server"]
    database = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert database.startswith("postgresql+asyncpg://") and "@postgres:5432/" in database
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert server["command"][:3] == ["prefect", "server", "start"]
    assert "healthcheck" in server and "healthcheck" in services["postgres"]

    worker = services["worker"]
    assert worker["deploy"]["replicas"] >= 2
    command = worker["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--pool") + 1] == local_server.WORK_POOL
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["depends_on"]["register"]["condition"] == "service_completed_successfully"

    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"

    # The cicd commands parse with the real CLI.
    from cicd.cli.main import build_parser

    register = build_parser().parse_args(services["register"]["command"][1:])
    assert register.command == "up" and register.workers == 0 and register.server_url
    hook = build_parser().parse_args(services["webhook"]["command"][1:])
    assert hook.command == "webhook" and hook.secret_env == "CICD_WEBHOOK_SECRET"

    # One API password: the server checks what every client sends.
    clients = [worker, services["register"], services["webhook"]]
    sent = {c["environment"]["PREFECT_API_AUTH_STRING"] for c in clients}
    assert len(sent) == 1 and "${PREFECT_API_AUTH_STRING:?" in sent.pop()
    checked = server["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert checked == worker["environment"]["PREFECT_API_AUTH_STRING"]
    # The same Prefect on the server as in the workers.
    import prefect

    assert server["image"].startswith(f"prefecthq/prefect:{prefect.__version__}-")
    # Results of every worker on the volume they all mount, under their CICD_HOME.
    environment = worker["environment"]
    results = environment["PREFECT_LOCAL_STORAGE_PATH"]
    assert results == f"{environment['CICD_HOME']}/results"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert mounts[environment["CICD_HOME"]] == "cicd-cache"
    assert "CICD_RESULT_STORAGE_BLOCK" in services["register"]["environment"]
    # The cost store on the compose PostgreSQL, in a database its init script creates.
    from tasks.llm.costs import engine_url

    costs = environment["CICD_COST_DB_URL"]
    assert costs.startswith("postgresql://") and "@postgres:5432/" in costs
    assert engine_url(costs).startswith("postgresql+psycopg://")
    database = costs.rsplit("/", 1)[1]
    postgres = services["postgres"]
    (init,) = postgres["configs"]
    assert init["target"].startswith("/docker-entrypoint-initdb.d/")
    assert f"CREATE DATABASE {database} " in compose["configs"][init["source"]]["content"]

    # The inline Dockerfile copies only what exists in this checkout.
    dockerfile = services["worker"]["build"]["dockerfile_inline"]
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the checkout"


# ------------------------------------------------------------------ cancel-in-progress, pure


def at(minute: int) -> datetime:
    return datetime(2026, 1, 1, 12, minute, tzinfo=UTC)


def test_older_runs_in_group_selects_only_older_runs_of_the_group() -> None:
    runs = [
        RunInfo("new", at(9), {"group": "acme#feat"}, "RUNNING"),
        RunInfo("old-2", at(5), {"group": "acme#feat"}, "PENDING"),
        RunInfo("old-1", at(1), {"group": "acme#feat"}, "SCHEDULED"),
        RunInfo("other-branch", at(1), {"group": "acme#main"}, "RUNNING"),
        RunInfo("no-group", at(1), {"repo": "acme"}, "RUNNING"),
        RunInfo("me", at(7), {"group": "acme#feat"}, "RUNNING"),
    ]
    chosen = older_runs_in_group("me", at(7), "acme#feat", runs)
    assert [run.id for run in chosen] == ["old-1", "old-2"]
    # The oldest run cancels nothing: a pair of runs can never cancel each other.
    assert older_runs_in_group("old-1", at(1), "acme#feat", runs) == []


def test_cancel_older_runs_outside_a_flow_run_is_a_no_op() -> None:
    assert cancel_older_runs("pr-validation", "acme#feat") == []


# ------------------------------------------------------------------ the stack of `cicd up`


@dataclass
class Stack:
    api_url: str
    port: int
    env: dict[str, str]
    home: Path
    up_output: str = ""

    @property
    def state_dir(self) -> Path:
        return self.home / "local-server"

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        return data

    def pids(self) -> dict[str, int]:
        return {p["role"]: p["pid"] for p in self.state()["processes"]}

    def auth_string(self) -> str:
        return (self.state_dir / "api-auth").read_text().strip()

    def cli_env(self) -> dict[str, str]:
        # The prefect CLI reads no state of ours: it needs the API password given.
        return {
            **self.env,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_AUTH_STRING": self.auth_string(),
        }


def stack_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["CICD_HOME"] = str(home)
    jars = Path.home() / ".cache" / "cicd-flows" / "services" / "neo4j" / "5.26.30"
    if "CICD_NEO4J_HOME" not in env and (jars / "lib").is_dir():
        # Flow runs inherit the worker's environment; the session's CICD_HOME
        # has no Neo4j jar cache of its own.
        env["CICD_NEO4J_HOME"] = str(jars)
    return env


@pytest.fixture(scope="module")
def stack(sample_repos: dict[str, Path]) -> Iterator[Stack]:
    home = Path(os.environ["CICD_HOME"])
    env = stack_env(home)
    port = free_port()
    state_file = home / "local-server" / "state.json"
    result = cli("up", "--port", str(port), "--repo", str(sample_repos["agentkit"]), env=env)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield Stack(
            api_url=f"http://127.0.0.1:{port}/api",
            port=port,
            env=env,
            home=home,
            up_output=result.stdout + result.stderr,
        )
    finally:
        cli("down", env=env, timeout=120)
        if state_file.exists():  # `down` failed: stop what is recorded, by pid
            for process in json.loads(state_file.read_text())["processes"]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process["pid"], signal.SIGKILL)
            state_file.unlink()


@pytest.mark.slow
def test_cicd_up_registers_pool_deployments_schedules_and_worker(stack: Stack) -> None:
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.client.schemas.sorting import FlowRunSort

    assert set(stack.pids()) == {"server", "worker-1"}
    assert (stack.state_dir / "server.pid").read_text().strip() == str(stack.pids()["server"])
    with api(stack.api_url) as client:
        assert client.read_work_pool("cicd-process").type == "process"
        workers = client.read_workers_for_work_pool("cicd-process")
        assert [w.status for w in workers] == [WorkerStatus.ONLINE]
        limit = client.read_global_concurrency_limit_by_name("cicd-neo4j-servers")
        assert limit.limit >= 1

        for name in PIPELINES:
            deployment = client.read_deployment_by_name(f"{name}/{name}")
            assert deployment.work_pool_name == "cicd-process"
            # The pull step points the worker at this checkout (resolved at deploy time).
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
            ]

        for name, cron in CRONS.items():
            deployment = client.read_deployment_by_name(name)
            schedules = [
                (s.schedule.cron, s.schedule.timezone, s.active)  # type: ignore[union-attr]
                for s in deployment.schedules
            ]
            assert schedules == [(cron, "UTC", True)], name

        poller = client.read_deployment_by_name("git-poller/git-poller")
        assert [(s.schedule.interval, s.active) for s in poller.schedules] == [  # type: ignore[union-attr]
            (timedelta(seconds=60), False)
        ]
        # Overlapping polls are dropped, not queued.
        assert poller.global_concurrency_limit is not None
        assert poller.global_concurrency_limit.limit == 1
        assert poller.concurrency_options is not None
        assert poller.concurrency_options.collision_strategy == "CANCEL_NEW"

        # The scheduler turned the nightly cron into upcoming runs at 02:00 UTC.
        nightly = client.read_deployment_by_name("nightly/nightly")

        def upcoming() -> list[Any]:
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

            runs: list[Any] = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )
            return runs

        wait_until(lambda: len(upcoming()) > 0, 120, "scheduled nightly runs")
        first = upcoming()[0]
        assert first.state is not None and first.state.is_scheduled()
        start = first.expected_start_time
        assert start is not None
        start = start.astimezone(UTC)
        assert (start.hour, start.minute) == (2, 0)
        assert first.parameters["repo"] == nightly.parameters["repo"]


CLIENT_AUTH = "PREFECT_API_AUTH_STRING"


@pytest.mark.slow
def test_the_stack_api_needs_its_password_and_the_cli_and_workers_have_it(stack: Stack) -> None:
    auth = stack.state_dir / "api-auth"
    assert auth.stat().st_mode & 0o777 == 0o600
    password = stack.auth_string()
    user, _, secret = password.partition(":")
    assert user == "cicd" and len(secret) >= 24
    assert secret not in stack.up_output and str(auth) in stack.up_output

    # Health stays open (probes); everything else needs the password.
    assert httpx.get(f"{stack.api_url}/health", timeout=10).status_code == 200
    filter_flows = f"{stack.api_url}/flows/filter"
    assert httpx.post(filter_flows, json={}, timeout=10).status_code == 401
    wrong = httpx.post(filter_flows, json={}, auth=(user, "not-it"), timeout=10)
    assert wrong.status_code == 401
    assert httpx.post(filter_flows, json={}, auth=(user, secret), timeout=10).status_code == 200

    # The worker authenticates (it is online, it heartbeats through the API) ...
    from prefect.client.schemas.objects import WorkerStatus

    with api(stack.api_url) as client:
        workers = client.read_workers_for_work_pool("cicd-process")
        assert [w.status for w in workers] == [WorkerStatus.ONLINE]
    # ... and so does the CLI, from the stack's state alone (no PREFECT_API_URL, no
    # PREFECT_API_AUTH_STRING): the run reaches the flow, which finds no such repo.
    own = {k: v for k, v in stack.env.items() if k not in ("PREFECT_API_URL", CLIENT_AUTH)}
    argv = ["run", "pr-validation", "--repo", "/nonexistent/repo", "--ref", "main", "--json"]
    listed = cli(*argv, env=own)
    assert listed.returncode == 2, listed.stdout + listed.stderr[-2000:]
    assert "Unauthorized" not in listed.stdout + listed.stderr
    assert "does not exist" in listed.stderr, listed.stderr[-2000:]
    assert secret not in listed.stdout + listed.stderr
    # The prefect CLI without it is refused.
    refused = subprocess.run(
        [str(BIN / "prefect"), "deployment", "ls"],
        env={**own, "PREFECT_API_URL": stack.api_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0 and "401 Unauthorized" in refused.stdout + refused.stderr


@pytest.mark.slow
def test_cicd_up_makes_one_result_storage_the_default_of_every_worker(stack: Stack) -> None:
    from prefect.filesystems import LocalFileSystem

    with api(stack.api_url) as client:
        default = client.read_server_default_result_storage().default_result_storage_block_id
        assert default is not None
        document = client.read_block_document(default)
    assert document.name == "cicd-results"
    assert document.block_type is not None and document.block_type.slug == "local-file-system"
    assert LocalFileSystem(**document.data).basepath == str(stack.home / "results")
    assert "result storage  local-file-system/cicd-results" in stack.up_output


@pytest.mark.slow
def test_prefect_deployment_run_of_pr_validation_completes(
    stack: Stack, sample_repos: dict[str, Path]
) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    repo = str(sample_repos["agentkit"])
    result = subprocess.run(
        [
            str(BIN / "prefect"),
            "deployment",
            "run",
            "pr-validation/pr-validation",
            "-p",
            f"repo={repo}",
            "-p",
            "ref=main",
            "--watch",
            "--watch-timeout",
            "900",
        ],
        env=stack.cli_env(),
        capture_output=True,
        text=True,
        timeout=1000,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, output[-2000:]

    run_id = uuid.UUID(match.group(1))
    with api(stack.api_url) as client:
        flow_run = client.read_flow_run(run_id)
        assert flow_run.state is not None and flow_run.state.is_completed()
        assert flow_run.parameters["repo"] == repo and flow_run.parameters["ref"] == "main"
        # Executed by our worker, in a process of its own.
        assert flow_run.work_pool_name == "cicd-process"
        assert flow_run.infrastructure_pid
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    # Job task runs are named after their jobs (tasks/job_runner.task_run_name).
    states = {t.name: t.state_name for t in task_runs}
    for job in ("quality", "unit", "framework"):
        assert states.get(job) in ("Completed", "Cached"), states


@pytest.mark.slow
@pytest.mark.neo4j
def test_cancelling_a_worker_run_stops_its_jobs_and_neo4j(
    stack: Stack, sample_repos: dict[str, Path]
) -> None:
    """`prefect flow-run cancel` on a PR run while its framework job holds a Neo4j."""
    from prefect.client.schemas.objects import StateType

    from tests.sample_repos import commit_on_branch
    from tests.test_pr_services import neo4j_servers

    repo = sample_repos["agentkit"]
    with commit_on_branch(repo, "cancel-on-worker", "feat: a worker run to cancel"):
        (repo / "src" / "agentkit" / "cancel_on_worker.py").write_text('"""Cancelled."""\n')
    started = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "pr-validation/pr-validation",
         "-p", f"repo={repo}", "-p", "ref=cancel-on-worker"],
        env=stack.cli_env(), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    match = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout + started.stderr)
    assert match, started.stdout + started.stderr
    run_id = uuid.UUID(match.group(1))

    wait_until(lambda: neo4j_servers() != [], 300, "the framework job's Neo4j")
    cancel = subprocess.run(
        [str(BIN / "prefect"), "flow-run", "cancel", str(run_id)],
        env=stack.cli_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr

    def state() -> Any:
        with api(stack.api_url) as client:
            run = client.read_flow_run(run_id)
        return run.state.type if run.state is not None else None

    wait_until(lambda: state() == StateType.CANCELLED, 120, "the run to be cancelled")
    wait_until(lambda: neo4j_servers() == [], 30, "the Neo4j server to stop")


PROBE_FLOW = """
import json
import os
import time

from prefect import flow

from flows.concurrency import cancel_older_runs


@flow(name="{name}")
def probe(group: str | None = None, hold: float = 0.0, report: str = "") -> None:
    cancelled = cancel_older_runs("{name}", group)
    if report:
        with open(report, "w") as handle:
            json.dump({{"pid": os.getpid(), "cancelled": cancelled}}, handle)
    time.sleep(hold)
"""


@pytest.fixture(scope="module")
def probe(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A deployment of a tiny flow on the stack's worker: it cancels the older
    runs of its group, reports its pid, then sleeps ``hold`` seconds."""
    directory = tmp_path_factory.mktemp("probe")
    name = f"cancel-probe-{uuid.uuid4().hex[:8]}"
    (directory / "probe.py").write_text(PROBE_FLOW.format(name=name))
    with api(stack.api_url) as client:
        return client.create_deployment(
            flow_id=client.create_flow_from_name(name),
            name="probe",
            entrypoint="probe.py:probe",
            work_pool_name="cicd-process",
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(directory)}}
            ],
        )


@pytest.mark.slow
def test_newer_run_of_a_group_cancels_older_runs_of_that_group(
    stack: Stack, probe: Any, tmp_path: Path
) -> None:
    from prefect.client.schemas.objects import StateType
    from prefect.states import Scheduled

    deployment_id = probe
    first_report, newer_report = tmp_path / "first.json", tmp_path / "newer.json"
    later = datetime.now(UTC) + timedelta(hours=1)
    with api(stack.api_url) as client:
        waiting = client.create_flow_run_from_deployment(
            deployment_id, parameters={"group": "acme#feat"}, state=Scheduled(scheduled_time=later)
        )
        other = client.create_flow_run_from_deployment(
            deployment_id, parameters={"group": "acme#main"}, state=Scheduled(scheduled_time=later)
        )
        running = client.create_flow_run_from_deployment(
            deployment_id,
            parameters={"group": "acme#feat", "hold": 300, "report": str(first_report)},
        )
        wait_until(
            lambda: client.read_flow_run(running.id).state_type == StateType.RUNNING
            and first_report.exists(),
            180,
            "the first run to be running",
        )
        first = json.loads(first_report.read_text())
        # The first run of the group already cancelled the queued run created before it.
        assert first["cancelled"] == [str(waiting.id)]
        assert client.read_flow_run(waiting.id).state_type == StateType.CANCELLED
        first_pid = first["pid"]
        assert pid_alive(first_pid)

        newer = client.create_flow_run_from_deployment(
            deployment_id, parameters={"group": "acme#feat", "report": str(newer_report)}
        )
        wait_until(
            lambda: (s := client.read_flow_run(newer.id).state) is not None and s.is_final(),
            180,
            "the newer run to finish",
        )
        finished = client.read_flow_run(newer.id)
        assert finished.state is not None and finished.state.is_completed()
        assert json.loads(newer_report.read_text())["cancelled"] == [str(running.id)]
        wait_until(
            lambda: client.read_flow_run(running.id).state_type == StateType.CANCELLED,
            120,
            "the running run to be cancelled",
        )
        # The worker killed the older run's process, long before its 300 s sleep ended.
        wait_until(lambda: not pid_alive(first_pid), 30, f"flow process {first_pid} to exit")
        # Another group is not touched.
        assert client.read_flow_run(other.id).state_type == StateType.SCHEDULED
        client.delete_flow_run(other.id)


def test_cicd_up_on_a_busy_port_fails_and_leaves_nothing(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("up", "--port", str(port), env=env, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert not (tmp_path / "home" / "local-server" / "state.json").exists()
    bad = cli("up", "--workers", "-1", env=env, timeout=120)
    assert bad.returncode == 2 and "--workers -1" in bad.stderr


@pytest.mark.slow
def test_failed_up_stops_the_server_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CICD_HOME", str(tmp_path / "home"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "prefect.yaml").write_text("deployments: nope\n")
    started: list[str] = []
    with pytest.raises(BadInput, match="'deployments' must be a non-empty list"):
        local_server.up(
            port=free_port(), project_dir=project, repo="unused", progress=started.append
        )
    assert any("starting the Prefect server" in line for line in started)
    # The server had been recorded; it was stopped and forgotten again.
    log = (tmp_path / "home" / "local-server" / "server.log").read_text()
    assert log  # it did run
    assert local_server.read_state() is None
    assert list((tmp_path / "home" / "local-server").glob("*.pid")) == []


@pytest.mark.slow
def test_up_again_reuses_the_stack_and_down_stops_every_process(
    stack: Stack, probe: Any, tmp_path: Path
) -> None:
    from prefect.client.schemas.objects import StateType

    before = stack.pids()
    again = cli("up", "--port", str(stack.port), "--no-deploy", env=stack.env)
    assert again.returncode == 0, again.stderr
    assert "already running: server, worker-1" in again.stdout
    assert stack.pids() == before

    # A flow run in flight when the stack goes down.
    report = tmp_path / "report.json"
    with api(stack.api_url) as client:
        run = client.create_flow_run_from_deployment(
            probe, parameters={"hold": 300, "report": str(report)}
        )
        wait_until(
            lambda: client.read_flow_run(run.id).state_type == StateType.RUNNING
            and report.exists(),
            180,
            "the flow run to be running",
        )
    run_pid = json.loads(report.read_text())["pid"]
    assert run_pid in local_server.child_pids(before["worker-1"])

    down = cli("down", env=stack.env, timeout=180)
    assert down.returncode == 0, down.stderr
    outcomes = dict(re.findall(r"^(.+?)\s+pid \d+\s+(\S+)$", down.stdout, re.MULTILINE))
    assert outcomes["worker-1"] == "stopped" and outcomes["server"] == "stopped", down.stdout
    assert outcomes[f"run {run.name}"] == "cancelled", down.stdout
    # Workers are stopped before the server.
    assert down.stdout.index("worker-1") < down.stdout.index("server")
    for pid in [*before.values(), run_pid]:
        assert not pid_alive(pid), f"pid {pid} survived cicd down"
    assert list(stack.state_dir.glob("*.pid")) == []
    assert not (stack.state_dir / "state.json").exists()
    assert not (stack.state_dir / "api-auth").exists()
    assert not local_server.api_healthy(stack.api_url)
    # The run is not left "Running" in the server's database.
    with sqlite3.connect(stack.state_dir / "prefect-home" / "prefect.db") as db:
        (state,) = db.execute(
            "SELECT state_type FROM flow_run WHERE id = ?", (str(run.id),)
        ).fetchone()
    assert state == "CANCELLED"
    assert "nothing to stop" in cli("down", env=stack.env).stdout


# ------------------------------------------------------------------ git poller


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    (path / "README.md").write_text("hello\n")
    commit_all(path, "initial")
    return path


class Starts:
    """The injected ``start``: records calls; fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.failing = False

    def __call__(self, deployment: str, parameters: dict[str, Any]) -> str:
        if self.failing:
            raise RuntimeError("Prefect API unreachable")
        self.calls.append((deployment, parameters))
        return f"run-{len(self.calls)}"


def test_ls_remote_of_a_real_repo_lists_branches_and_peeled_tags(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v0.1.0")
    git(repo, "tag", "-a", "v0.2.0", "-m", "annotated")
    git(repo, "checkout", "--quiet", "-b", "feature")
    second = commit_all(repo, "feature work")

    refs = ls_remote(str(repo))

    assert refs.branches == {"main": first, "feature": second}
    # The annotated tag resolves to its commit, not to the tag object.
    assert refs.tags == {"v0.1.0": first, "v0.2.0": first}
    assert git(repo, "rev-parse", "v0.2.0") != first


def test_poller_starts_integration_for_pushes_and_release_for_new_tags(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    state = tmp_path / "state.json"
    target = PollTarget(repo=str(repo), branches=["main", "develop"], tag_prefix="v")
    starts = Starts()

    first = poll([target], state, starts)
    assert first[0].baseline and starts.calls == []  # the first poll only records

    before = git(repo, "rev-parse", "HEAD")
    after = commit_all(repo, "feat: more")
    git(repo, "tag", "v1.0.0")
    git(repo, "tag", "nightly-1")  # not a release tag
    git(repo, "branch", "develop")
    git(repo, "branch", "unwatched")
    poll([target], state, starts)
    assert starts.calls == [
        ("integration", {"repo": str(repo), "ref": after, "base": before}),
        ("integration", {"repo": str(repo), "ref": after}),  # new branch: no base
        ("release", {"repo": str(repo), "ref": "v1.0.0"}),
    ]

    poll([target], state, starts)  # nothing changed
    assert len(starts.calls) == 3
    saved = json.loads(state.read_text())[str(repo)]
    assert saved["branches"]["main"] == after and "v1.0.0" in saved["tags"]


def test_poller_retries_a_run_it_could_not_start(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    state = tmp_path / "state.json"
    target = PollTarget(repo=str(repo))
    starts = Starts()
    poll([target], state, starts)
    before = git(repo, "rev-parse", "HEAD")
    after = commit_all(repo, "feat: more")
    git(repo, "tag", "v2.0.0")

    starts.failing = True
    outcome = poll([target], state, starts)[0]
    assert [t.deployment for t, _ in outcome.failed] == ["integration", "release"]
    assert "unreachable" in outcome.failed[0][1]

    starts.failing = False
    poll([target], state, starts)
    assert starts.calls == [
        ("integration", {"repo": str(repo), "ref": after, "base": before}),
        ("release", {"repo": str(repo), "ref": "v2.0.0"}),
    ]


def test_unreachable_repo_fails_the_poll_after_the_others_are_saved(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    state = tmp_path / "state.json"
    missing = str(tmp_path / "no-such-repo")
    with pytest.raises(InfrastructureError, match=r"git ls-remote .*no-such-repo"):
        poll([PollTarget(repo=missing), PollTarget(repo=str(repo))], state, Starts())
    assert list(json.loads(state.read_text())) == [str(repo)]


def test_moved_release_tag_is_not_released_again() -> None:
    target = PollTarget(repo="r", branches=["main"])
    old = RemoteRefs(branches={"main": "a" * 40}, tags={"v1.0.0": "a" * 40})
    new = RemoteRefs(branches={"main": "a" * 40}, tags={"v1.0.0": "b" * 40})
    changes = diff_refs("r", old, new, target)
    assert [c.name for c in changes] == ["v1.0.0"]
    assert "moved" in getattr(changes[0].event, "reason", "")


def test_parse_ls_remote_ignores_other_refs() -> None:
    output = (
        f"{'a' * 40}\tHEAD\n{'b' * 40}\trefs/heads/main\n{'c' * 40}\trefs/pull/1/head\n"
        f"{'d' * 40}\trefs/tags/v1\n{'e' * 40}\trefs/tags/v1^{{}}\n"
    )
    refs = parse_ls_remote(output)
    assert refs == RemoteRefs(branches={"main": "b" * 40}, tags={"v1": "e" * 40})


def test_bad_poll_targets_name_the_entry_and_field() -> None:
    with pytest.raises(BadInput, match=r"targets\[1\]: repo: String should have at least 1"):
        parse_targets([{"repo": "ok"}, {"repo": ""}], "targets")
    with pytest.raises(BadInput, match=r"targets\[0\]: brnches: Extra inputs"):
        parse_targets([{"repo": "ok", "brnches": ["main"]}], "targets")


@pytest.mark.usefixtures("prefect_server")
def test_poll_targets_come_from_the_prefect_variable() -> None:
    from prefect.variables import Variable

    from flows.git_poller import TARGETS_VARIABLE, configured_targets

    Variable.unset(TARGETS_VARIABLE)
    assert configured_targets() == []
    try:
        Variable.set(TARGETS_VARIABLE, [{"repo": "/srv/git/app.git", "branches": ["main", "dev"]}])
        assert configured_targets() == [
            PollTarget(repo="/srv/git/app.git", branches=["main", "dev"], tag_prefix="v")
        ]
        Variable.set(TARGETS_VARIABLE, [{"branches": ["main"]}], overwrite=True)
        with pytest.raises(BadInput, match=r"variable cicd-git-poller\[0\]: repo: Field required"):
            configured_targets()
    finally:
        Variable.unset(TARGETS_VARIABLE)


@pytest.mark.usefixtures("prefect_server")
def test_git_poller_flow_creates_runs_of_the_deployments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    from flows.git_poller import git_poller

    monkeypatch.setenv("CICD_HOME", str(tmp_path / "home"))
    repo = new_repo(tmp_path / "repo")
    suffix = f"poller-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        # No work pool: the runs stay Scheduled, nothing executes them.
        ids = {
            flow: client.create_deployment(flow_id=client.create_flow_from_name(flow), name=suffix)
            for flow in ("integration", "release")
        }
        try:
            target = [PollTarget(repo=str(repo))]
            template = f"{{flow}}/{suffix}"
            assert git_poller(targets=target, deployment_template=template)[0]["baseline"]
            commit_all(repo, "feat: more")
            git(repo, "tag", "v3.0.0")
            outcome = git_poller(targets=target, deployment_template=template)[0]

            started = {s["deployment"]: s["flow_run_id"] for s in outcome["started"]}
            assert set(started) == {"integration", "release"}
            for flow, run_id in started.items():
                flow_run = client.read_flow_run(uuid.UUID(run_id))
                assert flow_run.deployment_id == ids[flow]
                assert "git-poller" in flow_run.tags
                assert flow_run.state is not None and flow_run.state.is_scheduled()
                client.delete_flow_run(flow_run.id)
        finally:
            for deployment_id in ids.values():
                client.delete_deployment(deployment_id)


# ------------------------------------------------------------------ cicd webhook


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout}s")
    return proc.stdout.readline()


@pytest.mark.usefixtures("prefect_server")
def test_cicd_webhook_starts_the_deployment_of_a_signed_event(tmp_path: Path) -> None:
    import hashlib
    import hmac

    from prefect.client.orchestration import get_client

    secret = uuid.uuid4().hex
    family = f"hook-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "HOOK_SECRET": secret, "CICD_HOME": str(tmp_path / "home")}
    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(
            flow_id=client.create_flow_from_name("integration"), name=family
        )
        proc = subprocess.Popen(
            [
                str(BIN / "cicd"),
                "webhook",
                "--port",
                "0",
                "--secret-env",
                "HOOK_SECRET",
                "--deployment-template",
                f"{{flow}}/{family}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            line = read_line(proc, 60)
            match = re.search(r"listening on (http://\S+)", line)
            assert match, line
            url = match.group(1)
            payload = {
                "ref": "refs/heads/main",
                "before": "a" * 40,
                "after": "b" * 40,
                "repository": {"clone_url": "https://git.example.com/acme/app.git"},
            }
            body = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
            unsigned = httpx.post(url, content=body, headers=headers, timeout=30)
            assert unsigned.status_code == 401

            signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            signed = httpx.post(
                url, content=body, timeout=30, headers={**headers, "X-Hub-Signature-256": signature}
            )
            assert signed.status_code == 202, signed.text
            flow_run = client.read_flow_run(uuid.UUID(signed.json()["flow_run_id"]))
            assert flow_run.deployment_id == deployment_id
            assert flow_run.parameters == {
                "repo": "https://git.example.com/acme/app.git",
                "ref": "b" * 40,
                "base": "a" * 40,
            }
            client.delete_flow_run(flow_run.id)
        finally:
            stop_process_group(proc)  # type: ignore[arg-type]
            client.delete_deployment(deployment_id)
    assert not pid_alive(proc.pid)


def test_cicd_webhook_without_its_secret_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "CICD_HOME": str(tmp_path / "home")}
    env.pop("NO_SUCH_SECRET", None)
    result = cli("webhook", "--port", "0", "--secret-env", "NO_SUCH_SECRET", env=env, timeout=60)
    assert result.returncode == 2
    assert "--secret-env NO_SUCH_SECRET: the variable is not set or empty" in result.stderr
    no_api = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    result = cli("webhook", "--secret-env", "HOME", env=no_api, timeout=60)
    assert result.returncode == 2 and "set PREFECT_API_URL or run `cicd up`" in result.stderr
