"""Progress of a run in the terminal (issue 11, item 3): the events jobs emit
and the views of ``cicd run`` (live on a terminal, timestamped lines
otherwise, nothing with ``--quiet``).

Events come from real steps (``run_step`` runs real commands); the views
render to real streams. The end-to-end run is in
``tests/security/test_run_secrets.py``, which also reads this output.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from cicd import masking
from cicd.cli.progress_view import LiveView, PlainView, QuietView, job_summary, make_view, watching
from cicd.results import JobResult, JobState, TestCounts
from tasks import progress
from tasks.job import Deadline, run_step
from tests.conftest import BIN

STAMP = re.compile(r"^\d\d:\d\d:\d\d ")
# A step sees /usr, not this environment (cicd/sandbox.py).
SYSTEM_PYTHON = "/usr/bin/python3"


def collected() -> tuple[list[progress.ProgressEvent], progress.Listener]:
    events: list[progress.ProgressEvent] = []
    return events, events.append


def test_a_step_emits_its_start_with_the_masked_command_and_its_end(tmp_path: Path) -> None:
    secret = f"token-{uuid.uuid4().hex}"
    masking.register([secret])
    events, listener = collected()

    with progress.listening(listener), progress.job_running("unit"):
        ok = run_step(
            "echo",
            [SYSTEM_PYTHON, "-c", "print('hi')", secret],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"},
            deadline=Deadline(60),
        )
        failing = run_step(
            "fail",
            [SYSTEM_PYTHON, "-c", "raise SystemExit(3)"],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"},
            deadline=Deadline(60),
        )
    progress.step_started("after", "nobody listens")  # removed: not collected

    assert ok.ok and failing.returncode == 3
    kinds = [type(event).__name__ for event in events]
    assert kinds == ["JobStarted", "StepStarted", "StepFinished", "StepStarted", "StepFinished"]
    started = events[1]
    assert isinstance(started, progress.StepStarted)
    assert started.job == "unit" and started.step == "echo"
    assert secret not in started.command and masking.MASK in started.command
    finished = events[4]
    assert isinstance(finished, progress.StepFinished)
    assert (finished.job, finished.step, finished.returncode, finished.ok) == (
        "unit",
        "fail",
        3,
        False,
    )
    assert progress.current_job() is None  # the thread's job ends with its block


def test_a_listener_that_raises_never_reaches_the_job(tmp_path: Path) -> None:
    def broken(event: progress.ProgressEvent) -> None:
        raise RuntimeError("terminal gone")

    events, listener = collected()
    with progress.listening(broken), progress.listening(listener):
        result = run_step(
            "true",
            [SYSTEM_PYTHON, "-c", "pass"],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"},
            deadline=Deadline(60),
        )
    assert result.ok
    assert len(events) == 2  # the other listener still got both


def result(state: JobState = JobState.PASSED, **fields: object) -> JobResult:
    return JobResult("unit", state, 12.34, **fields)  # type: ignore[arg-type]


def test_the_summary_has_the_verdict_counts_coverage_and_reason() -> None:
    counts = TestCounts(passed=41, failed=1, errors=0, skipped=2)
    failed = result(JobState.FAILED, tests=counts, coverage_percent=87.46, reason="pytest (exit 1)")
    assert job_summary(failed) == (
        "failed in 12.3 s: 41 passed, 1 failed, 0 errors, 2 skipped, coverage 87.5% "
        "(pytest (exit 1))"
    )
    cached = job_summary(result(JobState.CACHED, origin="a54bfbbf-1359-459c-84a2-f61d88361f6e"))
    assert cached == "cached (ran 12.3 s in run a54bfbbf)"
    assert job_summary(result(JobState.TIMED_OUT)) == "timed out in 12.3 s"


def test_plain_lines_are_timestamped_masked_and_end_each_job_once() -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    masking.register([secret])
    stream = io.StringIO()
    view = PlainView(stream)

    with watching(view):
        with progress.job_running("framework"):
            progress.service_starting("neo4j", "process")
            progress.service_ready("neo4j", 12.34)
            progress.step_started("pytest", f"pytest --password {secret}")
            progress.step_finished("pytest", 0, 3.21, False)
        progress.job_finished(result(tests=TestCounts(passed=3)))
        progress.job_finished(result(tests=TestCounts(passed=3)))  # job_result's, again
        view.note(f"a note with {secret}")

    lines = stream.getvalue().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    texts = [STAMP.sub("", line) for line in lines]
    assert texts == [
        "framework: started",
        "framework: neo4j: starting (process)…",
        "framework: neo4j: ready in 12.3 s",
        f"framework: pytest: pytest --password {masking.MASK}",
        "framework: pytest: exit 0 in 3.2 s",
        "unit: passed in 12.3 s: 3 passed, 0 failed, 0 errors, 0 skipped",
        f"a note with {masking.MASK}",
    ]


def test_the_live_view_keeps_one_line_per_job_and_ends_with_each_verdict() -> None:
    stream = io.StringIO()
    view = LiveView(stream)
    with watching(view):
        # Two jobs in two threads, as the task runner runs them.
        def job(name: str, returncode: int) -> None:
            with progress.job_running(name):
                progress.step_started("pytest", "pytest -q tests")
                progress.step_finished("pytest", returncode, 0.5, False)
            state = JobState.PASSED if returncode == 0 else JobState.FAILED
            progress.job_finished(JobResult(name, state, 0.5, tests=TestCounts(passed=2)))

        threads = [
            threading.Thread(target=job, args=(n, c)) for n, c in (("unit", 0), ("framework", 1))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        progress.job_finished(JobResult("quality", JobState.CACHED, 4.0, origin="run-0"))

    out = stream.getvalue()
    final = out.splitlines()[-3:]  # the last frame, left on screen when the view stops
    assert any("unit" in line and "passed in 0.5 s: 2 passed" in line for line in final), out
    assert any("framework" in line and "failed in 0.5 s" in line for line in final), out
    assert any("quality" in line and "cached" in line for line in final), out


def test_on_a_narrow_terminal_only_what_a_job_does_is_cut() -> None:
    stream = io.StringIO()
    view = LiveView(stream, width=40)
    with watching(view):
        progress.job_finished(
            JobResult("framework-tests", JobState.FAILED, 3.0, tests=TestCounts(failed=9))
        )

    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("✗ framework-tests"), last
    assert last.rstrip().endswith("…") and len(last.rstrip()) <= 40, last


def test_the_view_is_live_on_a_terminal_plain_elsewhere_and_quiet_on_demand() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(make_view(io.StringIO()), PlainView)
    assert isinstance(make_view(io.StringIO(), quiet=True), QuietView)
    live = make_view(Terminal())
    try:
        assert isinstance(live, LiveView)
    finally:
        live.close()


@pytest.fixture(autouse=True)
def _no_listener_left() -> None:
    # A test must not leave a listener behind for the next one.
    yield  # type: ignore[misc]
    assert not progress._listeners


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("quiet", [False, True])
def test_cicd_run_prints_progress_on_stderr_unless_quiet_and_keeps_stdout_one_object(
    sample_repos: dict[str, Path], quiet: bool
) -> None:
    argv = [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(sample_repos["agentkit"])]
    argv += ["--ref", "bad-config", "--json", *(["--quiet"] if quiet else [])]
    result = subprocess.run(
        argv, env=dict(os.environ), capture_output=True, text=True, timeout=600, check=False
    )

    assert result.returncode == 2, result.stderr[-2000:]
    assert json.loads(result.stdout)["state"] == "error"  # one object, nothing else
    progress_lines = [line for line in result.stderr.splitlines() if STAMP.match(line)]
    if quiet:
        assert progress_lines == [], result.stderr
    else:
        assert [STAMP.sub("", line) for line in progress_lines] == ["pr-validation: started"]
