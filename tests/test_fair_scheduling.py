"""Fair scheduling (issue 16, item 6): the per-worker run limit and the server
slots a run reserves before its jobs start (or is requeued without them).

The end-to-end behaviour (runs spread over workers, a requeued run giving its
worker slot back) is in tests/test_scale_out.py.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cicd.errors import BadInput
from deployments.stack_processes import worker_argv
from deployments.stack_workers import (
    DEFAULT_RUNS_PER_WORKER,
    RUNS_PER_WORKER_ENV,
    runs_per_worker,
)
from flows.slot_wait import RETRY_ENV, WAIT_ENV, seconds_setting
from tasks.services import NEO4J_LIMIT, ServerSlotsBusy, neo4j_slot, reserved_neo4j_slots
from tests.conftest import BIN, REPO_ROOT

# A port of this helper's range, never bound: `up` must refuse before it starts anything.
UNUSED_PORT = "4731"


def test_runs_per_worker_comes_from_the_option_then_the_variable_then_the_default() -> None:
    assert runs_per_worker(None, {}) == DEFAULT_RUNS_PER_WORKER
    assert runs_per_worker(None, {RUNS_PER_WORKER_ENV: " 3 "}) == 3
    assert runs_per_worker(5, {RUNS_PER_WORKER_ENV: "3"}) == 5


@pytest.mark.parametrize(
    ("option", "env", "named"),
    [
        (0, {}, "--runs-per-worker='0'"),
        (-1, {}, "--runs-per-worker='-1'"),
        (None, {RUNS_PER_WORKER_ENV: "two"}, "CICD_RUNS_PER_WORKER='two'"),
        (None, {RUNS_PER_WORKER_ENV: "100000"}, "CICD_RUNS_PER_WORKER='100000'"),
        (None, {RUNS_PER_WORKER_ENV: "1.5"}, "CICD_RUNS_PER_WORKER='1.5'"),
    ],
)
def test_a_bad_runs_per_worker_names_where_it_came_from(
    option: int | None, env: dict[str, str], named: str
) -> None:
    with pytest.raises(BadInput, match=named.replace(".", r"\.")):
        runs_per_worker(option, env)


def test_the_worker_command_carries_the_limit() -> None:
    limited = worker_argv("cicd-process", "worker-1", 3)
    assert limited[limited.index("--limit") + 1] == "3"
    assert "--limit" not in worker_argv("cicd-process", "worker-1")


def test_compose_workers_have_the_same_limit_and_variable() -> None:
    compose = yaml.safe_load((REPO_ROOT / "deployments" / "docker-compose.yml").read_text())
    command = compose["services"]["worker"]["command"]
    limit = command[command.index("--limit") + 1]
    assert limit == f"${{{RUNS_PER_WORKER_ENV}:-{DEFAULT_RUNS_PER_WORKER}}}"


def test_cicd_up_refuses_a_bad_runs_per_worker_before_starting_anything(tmp_path: Path) -> None:
    import os

    home = tmp_path / "home"
    env = {**os.environ, "CICD_HOME": str(home)}
    result = subprocess.run(
        [str(BIN / "cicd"), "up", "--port", UNUSED_PORT, "--runs-per-worker", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--runs-per-worker='0'" in result.stderr
    assert not (home / "local-server" / "state.json").exists()


@pytest.mark.parametrize("name", [WAIT_ENV, RETRY_ENV])
@pytest.mark.parametrize("raw", ["0", "-3", "soon", "nan", "inf", "3601"])
def test_a_bad_slot_wait_setting_is_refused_with_its_name(name: str, raw: str) -> None:
    with pytest.raises(BadInput, match=f"{name}='{raw}'"):
        seconds_setting(name, 30.0, {name: raw})


def test_slot_wait_settings_default_and_read() -> None:
    assert seconds_setting(WAIT_ENV, 30.0, {}) == 30.0
    assert seconds_setting(WAIT_ENV, 30.0, {WAIT_ENV: "2.5"}) == 2.5


# --- reserving server slots on a real Prefect server ----------------------------------


def active_slots() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(NEO4J_LIMIT).active_slots)


@contextlib.contextmanager
def slots_held_elsewhere(count: int) -> Iterator[None]:
    """``count`` slots taken by another holder (a thread of this test) until the block ends."""
    from prefect.concurrency.sync import concurrency

    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with concurrency(NEO4J_LIMIT, occupy=count, strict=True):
            taken.set()
            release.wait(60)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(30), "the other holder never got its slots"
    try:
        yield
    finally:
        release.set()
        thread.join(30)


@pytest.fixture
def limit_of_two(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    def delete_limit() -> None:
        with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
            client.delete_global_concurrency_limit_by_name(NEO4J_LIMIT)

    monkeypatch.setenv("CICD_NEO4J_MAX_SERVERS", "2")
    delete_limit()
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=NEO4J_LIMIT, limit=2)
        )
    try:
        yield
    finally:
        delete_limit()


@pytest.mark.slow
def test_reserved_slots_serve_the_jobs_without_asking_again(limit_of_two: None) -> None:
    with reserved_neo4j_slots(3, timeout_seconds=10) as reserved:
        # At most the limit: asking for three of two would never succeed.
        assert reserved == 2
        assert active_slots() == 2
        # Two jobs draw on the reservation; the limit's count does not move.
        with neo4j_slot(), neo4j_slot():
            assert active_slots() == 2
    assert active_slots() == 0


@pytest.mark.slow
def test_busy_slots_raise_after_the_wait_instead_of_waiting_for_ever(limit_of_two: None) -> None:
    with slots_held_elsewhere(2):
        with (
            pytest.raises(ServerSlotsBusy, match="did not come free within 2s"),
            reserved_neo4j_slots(1, timeout_seconds=2),
        ):
            pytest.fail("reserved a slot of a full limit")
        assert active_slots() == 2
    # Once the other holder is done, the same reservation succeeds.
    with reserved_neo4j_slots(1, timeout_seconds=10) as reserved:
        assert reserved == 1
