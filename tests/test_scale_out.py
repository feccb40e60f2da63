"""Twenty PR runs at once on three workers (issue 16, "Must show").

A Prefect server on a real PostgreSQL, three ``prefect worker start --limit``
workers that share only that server and one ``CICD_HOME``
(tests/scale_cluster.py), twenty runs of the light sample over ten branches
(green ones, a failing test, a lint error) created back to back. Checked:
each verdict, that no run ran twice (one Running state per run, one journal
entry per job), that every worker ran at least two and never more than its
limit at once, and that a commit first run on one worker is served from the
shared cache on another once the first is stopped (a failing commit's
failure runs again).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from flows.slot_wait import RETRY_ENV, STATE_NAME, WAIT_ENV
from tasks.services import NEO4J_LIMIT
from tests.conftest import stop_process_group
from tests.postgres_fixture import PostgresServer, postgres_fixture  # noqa: F401 - fixture
from tests.scale_cluster import Cluster, make_light_branches, running_cluster, worker_of

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORKERS = 3
RUNS_PER_WORKER = 2
RUNS_PER_BRANCH = 2
RUNS_TIMEOUT = 600.0


@dataclass
class Submitted:
    cluster: Cluster
    expected: dict[str, bool]  # ref -> passes
    refs: dict[UUID, str]
    runs: dict[UUID, Any]  # final flow runs


@pytest.fixture(scope="module")
def cluster(
    postgres: PostgresServer,
    sample_repos: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, dict[str, bool]]]:
    repo = sample_repos["agentkit"]
    expected = make_light_branches(repo, green=6, red_test=2, red_lint=2)
    root = tmp_path_factory.mktemp("scale-out")
    # A run that cannot get its Neo4j slots within 3 s is requeued 10 s ahead.
    slot_wait = {WAIT_ENV: "3", RETRY_ENV: "10"}
    with running_cluster(postgres, root, repo, WORKERS, RUNS_PER_WORKER, slot_wait) as running:
        yield running, expected


@pytest.fixture(scope="module")
def submitted(cluster: tuple[Cluster, dict[str, bool]]) -> Submitted:
    running, expected = cluster
    refs = [ref for ref in expected for _ in range(RUNS_PER_BRANCH)]
    created = running.submit(refs)
    final = running.wait_final([run_id for run_id, _, _ in created], RUNS_TIMEOUT)
    return Submitted(running, expected, {run_id: ref for run_id, ref, _ in created}, final)


def running_intervals(states: list[Any]) -> list[tuple[datetime, datetime | None]]:
    """(Running, the next state's time) for each Running state of a run."""
    ordered = sorted(states, key=lambda s: s.timestamp)
    intervals = []
    for index, state in enumerate(ordered):
        if state.type.value == "RUNNING":
            end = ordered[index + 1].timestamp if index + 1 < len(ordered) else None
            intervals.append((state.timestamp, end))
    return intervals


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def kind(state: Any) -> str:
    """passed (ran), cached (served from the cache) or failed."""
    if state.name == "Cached":
        return "cached"
    return "passed" if state.is_completed() else "failed"


def test_twenty_runs_get_their_verdicts_once_each_spread_over_three_workers(
    submitted: Submitted,
) -> None:
    assert len(submitted.runs) == len(submitted.refs) == 20
    by_worker: dict[str, list[tuple[datetime, datetime]]] = {}
    for run_id, run in submitted.runs.items():
        ref = submitted.refs[run_id]
        passes = submitted.expected[ref]
        # The verdict: a failing commit fails, a passing one passes.
        assert run.state.is_completed() is passes, (ref, run.state_name, run.state.message)
        jobs = {name: kind(state) for name, state in submitted.cluster.job_states(run_id).items()}
        if passes:
            assert jobs.keys() == {"quality", "unit"} and "failed" not in jobs.values(), jobs
        elif ref.startswith("scale-red-test"):
            assert jobs["unit"] == "failed" and jobs["quality"] != "failed", jobs
            assert submitted.cluster.journal(run_id)["unit"]["failed"] == 1
        else:
            assert jobs["quality"] == "failed" and jobs["unit"] != "failed", jobs

        # Executed once: one Running state, and no job of it ended twice.
        intervals = running_intervals(submitted.cluster.states(run_id))
        assert len(intervals) == 1, (ref, intervals)
        start, end = intervals[0]
        assert end is not None
        by_worker.setdefault(worker_of(run), []).append((start, end))
        ends = Counter(
            line["name"]
            for line in submitted.cluster.journal_lines(run_id)
            if line["state"] != "planned"
        )
        assert all(count == 1 for count in ends.values()), (ref, ends)

    # Spread: every worker ran at least two, none more than its --limit at once.
    counts = Counter({name: len(runs) for name, runs in by_worker.items()})
    assert set(counts) == set(submitted.cluster.workers), counts
    assert min(counts.values()) >= 2, counts
    for name, intervals in by_worker.items():
        assert most_at_once(intervals) <= RUNS_PER_WORKER, (name, intervals)


def computed_by(submitted: Submitted) -> dict[str, dict[str, str]]:
    """For each green ref: the batch runs whose unit job ran (not cached) -> their worker."""
    computed: dict[str, dict[str, str]] = {}
    for run_id, run in submitted.runs.items():
        ref = submitted.refs[run_id]
        if not submitted.expected[ref]:
            continue
        if kind(submitted.cluster.job_states(run_id)["unit"]) == "passed":
            computed.setdefault(ref, {})[str(run_id)] = worker_of(run)
    return computed


def test_a_commit_first_run_on_one_worker_is_served_from_the_cache_on_another(
    submitted: Submitted,
) -> None:
    cluster = submitted.cluster
    # Worker A: the worker that computed a green commit's jobs (both runs of
    # the commit may have, on two workers: then both are stopped). The rerun
    # goes to a worker that never ran that commit.
    computed = computed_by(submitted)
    green, runs = min(computed.items(), key=lambda item: len(set(item[1].values())))
    stopped = set(runs.values())
    red = next(ref for ref in submitted.expected if ref.startswith("scale-red-test"))
    for name in stopped:
        cluster.stop_worker(name)

    created = cluster.submit([green, red])
    final = cluster.wait_final([run_id for run_id, _, _ in created], RUNS_TIMEOUT)
    (green_id, _, _), (red_id, _, _) = created
    assert worker_of(final[green_id]) not in ("", *stopped)
    assert final[green_id].state.is_completed()
    states = cluster.job_states(green_id)
    assert {name: kind(state) for name, state in states.items()} == {
        "quality": "cached",
        "unit": "cached",
    }
    # Served from what worker A's run computed, through the shared result storage.
    assert cluster.cached_origin(states["unit"]) in runs

    # The failing commit: its passing job comes from the cache, its failure runs again.
    assert worker_of(final[red_id]) not in ("", *stopped)
    assert not final[red_id].state.is_completed()
    red_states = {name: kind(state) for name, state in cluster.job_states(red_id).items()}
    assert red_states == {"quality": "cached", "unit": "failed"}
    assert cluster.journal(red_id)["unit"]["failed"] == 1

    # Every result went to the shared storage, none to a worker's own paths.
    assert any((cluster.shared_home / "results").iterdir())
    for name in (*stopped, *cluster.workers):
        local = cluster.root / f"{name}-local-storage"
        assert not local.exists() or not any(local.iterdir()), name
        assert not (cluster.root / f"{name}-prefect-home" / "storage").exists(), name


HOLD_SLOTS = """
import sys
from prefect.concurrency.sync import concurrency

with concurrency(sys.argv[1], occupy=int(sys.argv[2]), strict=True):
    print("held", flush=True)
    sys.stdin.readline()
"""


@contextmanager
def neo4j_slots_held(cluster: Cluster, count: int) -> Iterator[None]:
    """Every server slot taken by another client (a process of its own) until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_SLOTS, NEO4J_LIMIT, str(count)],
        env=cluster.client_env("holder"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the holder leaves its `with`, giving the slots back
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            stop_process_group(proc)  # type: ignore[arg-type]


def wait_for_state(cluster: Cluster, run_id: UUID, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(state.name == name for state in cluster.states(run_id)):
        assert time.monotonic() < deadline, f"{run_id} never reached {name}"
        time.sleep(1.0)


@pytest.mark.neo4j
def test_runs_waiting_for_neo4j_slots_are_requeued_and_free_their_worker_slots(
    submitted: Submitted, sample_repos: dict[str, Path]
) -> None:
    cluster = submitted.cluster
    # One worker left, two runs at most: both taken by runs that need Neo4j,
    # were they to wait for it in their processes.
    for name in sorted(cluster.workers)[1:]:
        cluster.stop_worker(name)
    (worker,) = cluster.workers
    with cluster.client() as client:
        limit = client.read_global_concurrency_limit_by_name(NEO4J_LIMIT).limit
    with neo4j_slots_held(cluster, limit):
        # The full sample: its framework suite needs a Neo4j server.
        waiting = cluster.submit(["main", "failing-test"])
        for run_id, _, _ in waiting:
            wait_for_state(cluster, run_id, STATE_NAME, timeout=300)
        # Meanwhile a run that needs no Neo4j gets the worker's slot and finishes.
        light = next(ref for ref, passes in submitted.expected.items() if passes)
        ((light_id, _, _),) = cluster.submit([light])
        done = cluster.wait_final([light_id], 300)[light_id]
        assert done.state.is_completed() and worker_of(done) == worker
        with cluster.client() as client:
            for run_id, ref, _ in waiting:
                run = client.read_flow_run(run_id)
                assert not run.state.is_final(), (ref, run.state_name)
    # Slots free: the requeued runs run to their verdicts.
    final = cluster.wait_final([run_id for run_id, _, _ in waiting], 600)
    (green_id, _, _), (red_id, _, _) = waiting
    assert final[green_id].state.is_completed(), final[green_id].state.message
    assert not final[red_id].state.is_completed()
    red_jobs = {name: kind(state) for name, state in cluster.job_states(red_id).items()}
    assert red_jobs["unit"] == "failed" and red_jobs["framework"] != "failed", red_jobs
    assert kind(cluster.job_states(green_id)["framework"]) != "failed"
    for run_id, _, _ in waiting:
        states = sorted(cluster.states(run_id), key=lambda s: s.timestamp)
        names = [state.name for state in states]
        # Each attempt ran and was put back, one at a time; the last one finished.
        running = [i for i, state in enumerate(states) if state.type.value == "RUNNING"]
        assert len(running) >= 2, names
        for index in running[:-1]:
            assert names[index + 1] == STATE_NAME, names
        assert states[-1].is_final(), names
