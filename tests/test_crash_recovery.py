"""Crash recovery (deployments/crash_recovery.py): a worker's host dies mid-run.

The end-to-end test runs the stack of ``cicd up`` (a Prefect server on SQLite;
tests/test_prefect_on_postgres.py covers PostgreSQL) with two process workers,
each in a PID namespace of its own (``unshare --pid --fork``, as two containers),
sharing one ``CICD_HOME``. Worker A's whole namespace is SIGKILLed while its
run holds a Neo4j; worker B holds a Neo4j of its own run meanwhile. Heartbeats
are Prefect's minimum (30 s), so the test waits for them: it is slow.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from cicd.errors import BadInput
from deployments import crash_recovery
from deployments.crash_recovery import RecoverySettings, settings_from_env
from tests.conftest import BIN, REPO_ROOT, free_port, stop_process_group
from tests.sample_repos import FAILING_TEST, commit_on_branch

HEARTBEAT = 30
ABSENT = 75
# A framework test that keeps its job's Neo4j up for ``seconds``.
SLOW_GRAPH_TEST = '''"""Holds the job's Neo4j for a while (tests/test_crash_recovery.py)."""

import time

import pytest


@pytest.mark.neo4j
def test_graph_stays_up_for_a_while() -> None:
    time.sleep({seconds})
'''


def test_recovery_settings_default_to_three_heartbeats_and_one_reschedule() -> None:
    settings = settings_from_env({})
    assert settings.heartbeat_seconds == 30 and settings.absent_seconds == 90
    assert settings.reschedules == 1 and "release" not in settings.flows
    assert crash_recovery.worker_env(settings) == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("CICD_HEARTBEAT_SECONDS", "10", ">= 30"),
        ("CICD_HEARTBEAT_SECONDS", "soon", ">= 30"),
        ("CICD_HEARTBEAT_ABSENT_SECONDS", "35", ">= 40"),
        ("CICD_CRASH_RESCHEDULES", "-1", ">= 0"),
        ("CICD_CRASH_RESCHEDULE_FLOWS", "pr validation", "flow names"),
    ],
)
def test_bad_recovery_settings_name_the_variable_and_value(name: str, value: str, why: str) -> None:
    with pytest.raises(BadInput) as caught:
        settings_from_env({name: value})
    assert name in str(caught.value) and repr(value) in str(caught.value)
    assert why in str(caught.value)


def test_the_rescheduler_is_bounded_by_attempts_and_scoped_to_its_flows() -> None:
    detect, reschedule = crash_recovery.automations(
        RecoverySettings(absent_seconds=45, reschedules=2, flows=("pr-validation",))
    )
    assert detect.trigger.posture == "Proactive"  # type: ignore[union-attr]
    assert detect.trigger.within.total_seconds() == 45  # type: ignore[union-attr]
    assert detect.actions[0].state == "CRASHED"  # type: ignore[union-attr]
    match = reschedule.trigger.match  # type: ignore[union-attr]
    assert match.get("prefect.run-count") == ["1", "2"]
    related = reschedule.trigger.match_related  # type: ignore[union-attr]
    assert related.get("prefect.resource.name") == ["pr-validation"]  # type: ignore[union-attr]
    assert reschedule.actions[0].name == "AwaitingRetry"  # type: ignore[union-attr]
    # Rescheduling off: only the detector.
    assert len(crash_recovery.automations(RecoverySettings(reschedules=0))) == 1


def test_cicd_up_with_a_bad_heartbeat_setting_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(CICD_HOME=str(tmp_path / "home"), CICD_HEARTBEAT_SECONDS="10")
    up = cicd("up", "--port", str(free_port()), "--workers", "0", env=env, timeout=120)
    assert up.returncode == 2, up.stdout + up.stderr
    assert "CICD_HEARTBEAT_SECONDS='10'" in up.stderr and ">= 30" in up.stderr
    assert not (tmp_path / "home" / "local-server" / "state.json").exists()


# --- end to end --------------------------------------------------------------


def unshare_works() -> bool:
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]  # `unshare`, in our namespace

    def init_pid(self) -> int:
        """The namespace's PID 1 (unshare's forked child), as seen from here."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def pid_namespace(self) -> int:
        return os.stat(f"/proc/{self.init_pid()}/ns/pid").st_ino


@dataclass
class CrashStack:
    api_url: str
    auth: str
    home: Path
    env: dict[str, str]
    workers: list[Worker]

    def start_worker(self, name: str, log: Path, limit: int | None = None) -> Worker:
        from deployments.stack_processes import worker_env

        env = {
            **worker_env(self.api_url, self.home, self.env),
            **crash_recovery.worker_env(settings_from_env(self.env)),
            "PREFECT_API_AUTH_STRING": self.auth,
            "PREFECT_HOME": str(self.home.parent / f"{name}-prefect-home"),
            "PREFECT_LOCAL_STORAGE_PATH": str(self.home / "results"),
        }
        # A /proc of its own, as a container has (bubblewrap needs it to match).
        argv = ["unshare", "--pid", "--fork", "--mount-proc", str(BIN / "prefect"), "worker"]
        argv += ["start"]
        argv += ["--pool", "cicd-process", "--name", name]
        argv += ["--limit", str(limit)] if limit is not None else []
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        worker = Worker(name, proc)
        self.workers.append(worker)
        wait_until(lambda: self.online(name), 120, f"worker {name} online")
        return worker

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(self.api_url, auth_string=self.auth) as client:
            yield client

    def online(self, name: str) -> bool:
        with self.client() as client:
            workers = client.read_workers_for_work_pool("cicd-process")
        return any(w.name == name and w.status == "ONLINE" for w in workers)

    def submit(self, repo: Path, ref: str) -> UUID:
        with self.client() as client:
            deployment = client.read_deployment_by_name("pr-validation/pr-validation")
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"repo": str(repo), "ref": ref}
            )
        return UUID(str(run.id))

    def flow_run(self, run_id: UUID) -> Any:
        with self.client() as client:
            return client.read_flow_run(run_id)

    def states(self, run_id: UUID) -> list[Any]:
        with self.client() as client:
            return sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)


def cicd(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cicd"), *args], env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


@pytest.fixture
def crash_stack(
    tmp_path: Path, sample_repos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[CrashStack]:
    home = tmp_path / "cicd-home"
    auth = f"cicd:{secrets.token_urlsafe(24)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        CICD_HOME=str(home),
        PREFECT_HOME=str(tmp_path / "register-prefect-home"),
        PREFECT_API_AUTH_STRING=auth,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        CICD_HEARTBEAT_SECONDS=str(HEARTBEAT),
        CICD_HEARTBEAT_ABSENT_SECONDS=str(ABSENT),
        # Two live servers and the rerun's: no wait on the global limit.
        CICD_NEO4J_MAX_SERVERS="4",
    )
    # What this process reads (ownership records) is that stack's CICD_HOME.
    monkeypatch.setenv("CICD_HOME", str(home))
    port = free_port()
    up = cicd("up", "--port", str(port), "--workers", "0", "--repo", str(sample_repos["agentkit"]),
              env=env)  # fmt: skip
    stack = CrashStack(f"http://127.0.0.1:{port}/api", auth, home, env, [])
    try:
        assert up.returncode == 0, up.stdout + up.stderr[-3000:]
        assert crash_recovery.DETECT_AUTOMATION in up.stdout + up.stderr
        with stack.client() as client:
            deployment = client.read_deployment_by_name("pr-validation/pr-validation")
            names = {a.name for a in client.read_automations()}
        # Whichever worker runs it, a run heartbeats at the period the window counts in.
        env_of_runs = deployment.job_variables["env"]
        assert env_of_runs["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT)
        assert set(crash_recovery.AUTOMATIONS) <= names
        yield stack
    finally:
        for worker in stack.workers:
            if worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, OSError, IndexError, ValueError):
                    os.kill(worker.init_pid(), signal.SIGKILL)  # the whole namespace
                stop_process_group(worker.proc, grace=10)
        cicd("down", env=env, timeout=120)


def neo4j_in(namespace: int) -> list[Any]:
    """The Neo4j servers claimed by flow processes of that PID namespace."""
    from tasks.services.neo4j_reaping import server_records

    return [r for r in server_records() if r.claim.owner_pid_ns == namespace]


def run_dirs(home: Path, run_id: UUID) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for directory in (home / "runs").glob(f"pr-validation-{run_id}*"):
        attempt = json.loads((directory / "attempt.json").read_text())
        found[int(attempt["attempt"])] = directory
    return found


def assert_crashed_once_then_ran_again(names: list[str]) -> None:
    """Running, Crashed, AwaitingRetry, then Running again: never two at once
    (a run put back for its Neo4j slots, AwaitingConcurrencySlot, runs again too)."""
    assert names.count("Crashed") == 1 and names.count("AwaitingRetry") == 1, names
    crashed = names.index("Crashed")
    assert "Running" in names[:crashed] and crashed < names.index("AwaitingRetry"), names
    after = names[crashed + 1 :]
    assert "Running" in after and after.index("AwaitingRetry") < after.index("Running"), names
    running = [i for i, name in enumerate(names) if name == "Running"]
    ended = {"Crashed", "AwaitingConcurrencySlot"}
    for before, later in itertools.pairwise(running):
        assert ended & set(names[before + 1 : later]), names


@pytest.mark.slow
@pytest.mark.neo4j
@pytest.mark.skipif(not unshare_works(), reason="unshare --pid needs root (or user namespaces)")
def test_runs_whose_worker_host_dies_are_crashed_rescheduled_and_judged_elsewhere(
    crash_stack: CrashStack, sample_repos: dict[str, Path], tmp_path: Path
) -> None:
    from cicd import reclaim
    from cicd.ownership import start_time
    from cicd.runs import read_journal

    repo = sample_repos["agentkit"]
    with commit_on_branch(repo, "crash-red", "test: capitals, and a graph test of 90 s"):
        (repo / "tests" / "unit" / "test_capitals.py").write_text(FAILING_TEST)
        (repo / "tests" / "integration" / "test_slow_graph.py").write_text(
            SLOW_GRAPH_TEST.format(seconds=90)
        )
    with commit_on_branch(repo, "crash-green", "test: a graph test of 90 s"):
        (repo / "tests" / "integration" / "test_slow_graph.py").write_text(
            SLOW_GRAPH_TEST.format(seconds=90)
        )
    with commit_on_branch(repo, "crash-long", "test: a graph test of 240 s"):
        (repo / "tests" / "integration" / "test_slow_graph.py").write_text(
            SLOW_GRAPH_TEST.format(seconds=240)
        )

    # Worker A alone takes a red and a green run (limit 2: never a third).
    worker_a = crash_stack.start_worker("crash-a", tmp_path / "worker-a.log", limit=2)
    ns_a = worker_a.pid_namespace()
    red = crash_stack.submit(repo, "crash-red")
    green = crash_stack.submit(repo, "crash-green")
    wait_until(
        lambda: all(crash_stack.flow_run(r).state_type == "RUNNING" for r in (red, green)),
        300,
        "A's runs",
    )
    # Then worker B, with a long green run; each run starts a Neo4j in its namespace.
    worker_b = crash_stack.start_worker("crash-b", tmp_path / "worker-b.log")
    ns_b = worker_b.pid_namespace()
    assert ns_a != ns_b
    long_green = crash_stack.submit(repo, "crash-long")
    neo4j_a = wait_until(lambda: len(neo4j_in(ns_a)) == 2 and neo4j_in(ns_a), 900, "A's Neo4js")
    (neo4j_b,) = wait_until(lambda: neo4j_in(ns_b), 900, "worker B's Neo4j")
    assert {crash_stack.flow_run(r).state_type for r in (red, green)} == {"RUNNING"}
    pids_a = [reclaim.local_pid(server.claim.processes[0]) for server in neo4j_a]
    pid_b = reclaim.local_pid(neo4j_b.claim.processes[0])
    assert pid_b and pid_alive(pid_b)
    assert all(pid and pid_alive(pid) for pid in pids_a), "a run of A ended before the kill"
    started_b = start_time(pid_b)

    # The host of worker A dies: PID 1 of its namespace, and with it everything in it.
    os.kill(worker_a.init_pid(), signal.SIGKILL)
    worker_a.proc.wait(30)
    wait_until(
        lambda: not any(pid_alive(pid) for pid in pids_a if pid),
        30,
        "A's Neo4j servers to die with its namespace",
    )
    killed_at = time.time()
    assert all(Path(server.home).is_dir() for server in neo4j_a)  # nobody reaped them yet

    # The server notices the missing heartbeats, crashes both runs and reschedules
    # them; worker B starts their second attempts. B's reclaim cannot see A's
    # namespace (a /proc of its own), so it leaves A's Neo4j claims alone:
    # nothing proves them dead from there.
    def second_attempts() -> dict[UUID, dict[int, Path]] | None:
        found = {run_id: run_dirs(crash_stack.home, run_id) for run_id in (red, green)}
        return found if all(2 in dirs for dirs in found.values()) else None

    dirs = wait_until(second_attempts, ABSENT + 300, "the second attempts")
    assert all(Path(server.home).is_dir() for server in neo4j_a)
    # The reaper that sees every namespace (the compose file's `reaper`: `cicd gc`
    # in the host's PID namespace) reaps them, while B's Neo4j is live.
    assert pid_alive(pid_b) and crash_stack.flow_run(long_green).state_type == "RUNNING"
    gc = cicd("gc", "--json", env=crash_stack.env, timeout=120)
    assert gc.returncode == 0, gc.stdout + gc.stderr[-2000:]
    reaped = json.loads(gc.stdout)["reclaimed"]
    removed = {path for r in reaped if r["kind"] == "neo4j" for path in r["removed"]}
    assert {server.home for server in neo4j_a} <= removed, reaped
    assert not any(Path(server.home).exists() for server in neo4j_a)
    # Worker B's live Neo4j, started before the crash, is untouched.
    assert pid_alive(pid_b) and start_time(pid_b) == started_b
    assert Path(neo4j_b.home).is_dir() and neo4j_b.home not in removed

    def final(run_id: UUID) -> Any:
        run = crash_stack.flow_run(run_id)
        return run if run.state is not None and run.state.is_final() else None

    every_run = (red, green, long_green)
    wait_until(lambda: all(final(r) for r in every_run), 900, "every verdict")
    runs = {r: final(r) for r in every_run}

    # The right verdicts, each from the second attempt for the crashed runs.
    assert runs[red].state_type == "FAILED", runs[red].state.message
    assert runs[green].state_type == "COMPLETED", runs[green].state.message
    assert runs[long_green].state_type == "COMPLETED", runs[long_green].state.message
    # Each crashed run ran again; a run put back for its Neo4j slots
    # (flows/slot_wait.py, AwaitingConcurrencySlot) counts another run each time.
    assert runs[red].run_count >= 2 and runs[green].run_count >= 2, (
        runs[red].run_count,
        runs[green].run_count,
    )
    assert runs[long_green].run_count >= 1
    # The verdict is the last attempt's (earlier ones may have been put back for slots).
    last = {r: max(run_dirs(crash_stack.home, r).items())[1] for r in (red, green)}
    red_jobs = {job["name"]: job["state"] for job in read_journal(last[red])}
    assert red_jobs.get("unit") == "failed" and red_jobs.get("framework") == "passed", red_jobs
    green_jobs = {job["name"]: job["state"] for job in read_journal(last[green])}
    assert green_jobs.get("framework") == "passed" and "failed" not in green_jobs.values()

    timings: dict[str, Any] = {"heartbeat_seconds": HEARTBEAT, "absent_seconds": ABSENT}
    for label, run_id in (("red", red), ("green", green)):
        assert_crashed_once_then_ran_again([s.name for s in crash_stack.states(run_id)])
        # Who ran what: attempt 1 in A's namespace, killed there (never ended;
        # its directory noted as reclaimed); attempt 2 in B's, started after A died.
        first = json.loads((dirs[run_id][1] / "attempt.json").read_text())
        second = json.loads((last[run_id] / "attempt.json").read_text())
        assert first["pid_ns"] == ns_a and "ended" not in first
        assert (dirs[run_id][1] / reclaim.NOTE_NAME).is_file()
        assert second["pid_ns"] == ns_b and second["started"] > killed_at
        assert second["ended"] >= second["started"]
        # The timings of this recovery, for people (deployments/README.md).
        history = {s.name: s.timestamp.timestamp() for s in crash_stack.states(run_id)}
        timings[label] = {
            "kill_to_crashed": history["Crashed"] - killed_at,
            "kill_to_rescheduled": history["AwaitingRetry"] - killed_at,
            "kill_to_second_attempt": second["started"] - killed_at,
            "second_attempt_seconds": second["ended"] - second["started"],
        }
    (tmp_path / "timings.json").write_text(json.dumps(timings, indent=2))
