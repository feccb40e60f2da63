"""The cores shared between a run's jobs (tasks/core_shares.py, issue 15): a job's
first step never waits for another job; its extra steps run side by side only on
cores no other job holds."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cicd.errors import BadInput
from tasks.core_shares import VARIABLE, CoreShares, cores
from tasks.job import Deadline, run_step


@contextlib.contextmanager
def holding(shares: CoreShares, job: str) -> Iterator[threading.Event]:
    """A step of ``job`` that holds its share until the event is set."""
    release, held = threading.Event(), threading.Event()

    def step() -> None:
        with shares.step(job) as granted:
            assert granted
            held.set()
            release.wait(30)

    thread = threading.Thread(target=step)
    thread.start()
    assert held.wait(30)
    try:
        yield release
    finally:
        release.set()
        thread.join(30)


def started_within(shares: CoreShares, job: str, seconds: float) -> bool:
    with shares.step(job, timeout=seconds) as granted:
        return granted


def test_a_jobs_first_step_starts_even_when_other_jobs_hold_every_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(VARIABLE, "2")
    shares = CoreShares()
    with (
        shares.job("quality"),
        shares.job("unit"),
        shares.job("framework"),
        holding(shares, "quality"),
        holding(shares, "framework"),
    ):
        assert shares.running() == 2
        assert started_within(shares, "unit", 0.5)


def test_an_extra_step_waits_while_another_job_holds_the_other_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(VARIABLE, "2")
    shares = CoreShares()
    # unit is on, between steps: its core is kept for it.
    with shares.job("quality"), shares.job("unit"), holding(shares, "quality"):
        assert not started_within(shares, "quality", 0.3)
    # Once unit has ended, quality's steps run side by side.
    with shares.job("quality"), holding(shares, "quality"):
        assert started_within(shares, "quality", 0.5)


def test_a_waiting_step_starts_when_a_step_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "2")
    shares = CoreShares()
    started = threading.Event()

    def extra() -> None:
        with shares.step("quality", timeout=30) as granted:
            if granted:
                started.set()

    with (
        shares.job("quality"),
        shares.job("unit"),
        holding(shares, "unit"),
        holding(shares, "quality") as first,
    ):
        waiter = threading.Thread(target=extra)
        waiter.start()
        assert not started.wait(0.3)
        first.set()  # quality's first tool ends: the next one takes its core
        assert started.wait(30)
        waiter.join(30)


def test_sharing_off_starts_every_step_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "0")
    shares = CoreShares()
    with shares.job("quality"), shares.job("unit"), holding(shares, "quality"):
        assert started_within(shares, "quality", 0.1)


def test_cores_default_to_the_cpus_this_process_may_use() -> None:
    import os

    assert cores({}) == len(os.sched_getaffinity(0))
    assert cores({VARIABLE: " 3 "}) == 3


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_a_bad_core_count_is_refused_by_name(value: str) -> None:
    with pytest.raises(BadInput, match=rf"{VARIABLE}={value!r}"):
        cores({VARIABLE: value})


def test_a_step_that_never_gets_a_core_before_its_deadline_is_timed_out_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.core_shares import SHARES

    monkeypatch.setenv(VARIABLE, "1")
    marker = tmp_path / "ran"
    with (
        SHARES.job("quality"),
        SHARES.job("unit"),
        holding(SHARES, "quality"),
        holding(SHARES, "unit"),
    ):
        step = run_step(
            "ruff",
            ["touch", str(marker)],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"},
            deadline=Deadline(0.3),
            job="quality",
        )
    assert step.timed_out and not step.ok
    assert "no core was free" in step.output_tail
    assert not marker.exists()
