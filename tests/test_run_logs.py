"""What a person sees of a run in the Prefect UI: its name and tags, its task
runs named after the jobs, step logs that are live and bounded, a failing job's
reason and output tail, the flow's state message in one line; and in a real
headless Chromium, the failed run's page.

One failing PR run (a lint error and a failing test) is shared by the module:
it runs against the session's real Prefect server, everything is read back
through the Prefect client, as the UI reads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cicd import command, command_output
from cicd.results import JobResult, JobState, PipelineFailed, StepResult, TestCounts, TestFailure
from flows.run_names import branch_label, event_of, repo_label, run_name, run_tags
from tasks import step_logs
from tests.conftest import REPO_ROOT
from tests.sample_repos import FAILING_TEST, LINT_ERROR, commit_on_branch

FAILING_ID = "tests/unit/test_capitals.py::test_agent_knows_capitals"
ASSERTION = "agent forgot Paris"
# Only quality (ruff) and unit: no Neo4j needed to show what a failure looks like.
CONFIG = """version: 1
environment: {extras: [dev]}
quality:
  ruff: {paths: [src, tests]}
tests:
  unit: {paths: [tests/unit], timeout: 600}
pipelines:
  pr-validation: {suites: [unit]}
"""


# --- pure parts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("https://github.com/owner/repo.git", "owner/repo"),
        ("https://gitlab.example.com/group/sub/repo", "sub/repo"),
        ("git@github.com:owner/repo.git", "owner/repo"),
        ("ssh://git@host:2222/owner/repo.git/", "owner/repo"),
        ("/tmp/x/agentkit", "agentkit"),
        ("/tmp/x/agentkit.git/", "agentkit"),
    ],
)
def test_repo_label_is_owner_and_name(address: str, label: str) -> None:
    assert repo_label(address) == label


def test_run_name_has_flow_repo_branch_and_short_sha() -> None:
    sha = "1a2b3c4d5e6f" + "0" * 28
    name = run_name("pr-validation", "https://github.com/o/r", "refs/heads/feat/x", sha)
    assert name == "pr-validation · o/r@feat/x · 1a2b3c4"
    assert branch_label("refs/tags/v1.2") == "v1.2"
    assert run_tags("https://github.com/o/r", "main", "webhook") == [
        "repo:o/r",
        "branch:main",
        "event:webhook",
    ]
    assert event_of(["git-poller"], uuid.uuid4(), False) == "git-poller"
    assert event_of([], uuid.uuid4(), True) == "schedule"
    assert event_of([], uuid.uuid4(), False) == "deployment"
    assert event_of([], None, False) == "manual"


def test_headline_names_failed_tests_in_one_line() -> None:
    tests = TestCounts(passed=3, failed=1, failures=(TestFailure("t.py::test_y", "boom\nx"),))
    unit = JobResult("unit", JobState.FAILED, 1.0, tests=tests, reason="1 failed")
    quality = JobResult("quality", JobState.FAILED, 1.0, reason="ruff (exit 1),\nmypy (exit 1)")
    assert unit.headline() == "unit failed: 1 failed (t.py::test_y: boom)"
    assert quality.headline() == "quality failed: ruff (exit 1), mypy (exit 1)"
    passed = JobResult("unit", JobState.PASSED, 1.0, tests=TestCounts(passed=3))
    assert passed.headline() == "unit passed: 3 passed"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def records() -> Iterator[tuple[Records, logging.Logger]]:
    handler = Records()
    logger = logging.getLogger(f"test.steps.{uuid.uuid4().hex}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    yield handler, logger
    logger.removeHandler(handler)


def test_a_huge_step_output_is_bounded_in_the_logs_file_and_memory(
    tmp_path: Path, records: tuple[Records, logging.Logger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """100k lines and a 20 MB line without newline: a few hundred log records,
    a log file cut at its bound with the tail kept, a tail in memory."""
    handler, logger = records
    monkeypatch.setattr(command_output, "MAX_LOG_BYTES", 4 * 2**20)
    program = (
        "import sys\n"
        "w = sys.stdout.buffer.write\n"
        "for i in range(100_000): w(b'line %d of the output\\n' % i)\n"
        "w(b'y' * 20_000_000)\n"
        "w(b'\\nthe very last line\\n')\n"
    )
    log = tmp_path / "unit.log"
    live = step_logs.StepLog("unit", "pytest", "python -c ...", log, logger)
    tracemalloc.start()
    try:
        result = command.run([sys.executable, "-c", program], log_path=log, on_line=live.line)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    live.ended(result)

    assert result.ok and result.lines == 100_002
    # The tail in memory is bounded, and is the end of the output.
    assert len(result.output) <= command_output.OUTPUT_TAIL_CHARS
    assert result.output.endswith("yyyy\nthe very last line\n")
    assert peak < 8 * 2**20, f"peak Python allocations {peak / 2**20:.1f} MiB"
    # The logs: the command, the first lines live, a notice naming the file, the tail.
    bound = step_logs.HEAD_LINES + step_logs.TAIL_LINES + 5
    assert len(handler.messages) <= bound, len(handler.messages)
    assert "$ python -c ..." in handler.messages[0] and str(log) in handler.messages[0]
    assert handler.messages[1].endswith("| line 0 of the output")
    assert any(str(log) in m and "more than" in m for m in handler.messages)
    assert handler.messages[-2].endswith("| the very last line")
    assert "exit 0" in handler.messages[-1] and "100002 lines" in handler.messages[-1]
    assert all(len(m) < step_logs.LINE_CHARS + 200 for m in handler.messages)
    # The file: its bound, a notice, then the tail and the exit line.
    size = log.stat().st_size
    assert size < command_output.MAX_LOG_BYTES + command_output.OUTPUT_TAIL_CHARS + 2000
    text = log.read_text()
    assert "line 0 of the output\n" in text and "[cicd] output cut:" in text
    assert text.endswith(f"the very last line\n[cicd] exit 0 in {result.duration:.2f}s\n")


def test_a_failing_job_logs_its_headline_and_the_failing_steps_tail(
    records: tuple[Records, logging.Logger],
) -> None:
    handler, logger = records
    tail = "\n".join(f"out {i}" for i in range(100)) + f"\nFAILED {FAILING_ID} - {ASSERTION}"
    steps = (StepResult("pytest", "python -m pytest", 1, 2.0, output_tail=tail),)
    tests = TestCounts(passed=12, failed=1, failures=(TestFailure(FAILING_ID, ASSERTION),))
    step_logs.log_job_end(
        JobResult("unit", JobState.FAILED, 2.0, steps, tests, reason="1 failed"), logger
    )
    (message,) = handler.messages
    assert message.startswith(f"unit failed: 1 failed ({FAILING_ID}: {ASSERTION})\n")
    assert message.endswith(f"FAILED {FAILING_ID} - {ASSERTION}")
    assert "out 60" not in message and "out 99" in message
    assert "JobResult(" not in message


# --- one failing run, read back through the Prefect client -----------------------


@dataclass(frozen=True)
class FailedRun:
    id: uuid.UUID
    branch: str
    commit: str
    failure: PipelineFailed


def read(coroutine_fn: Any) -> Any:
    from prefect.client.orchestration import get_client

    async def go() -> Any:
        async with get_client() as client:
            return await coroutine_fn(client)

    return asyncio.run(go())


def run_logs(run_id: uuid.UUID) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    async def logs(client: Any) -> list[str]:
        found = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
            sort=LogSort.TIMESTAMP_ASC,
            limit=200,
        )
        messages = [log.message for log in found]
        offset = len(found)
        while len(found) == 200:
            found = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                sort=LogSort.TIMESTAMP_ASC,
                limit=200,
                offset=offset,
            )
            messages += [log.message for log in found]
            offset += len(found)
        return messages

    result: list[str] = read(logs)
    return result


@pytest.fixture(scope="module")
def failed_run(prefect_server: str, sample_repos: dict[str, Path]) -> FailedRun:
    from prefect.logging.handlers import APILogHandler

    from flows.pr_validation import pr_validation

    repo = sample_repos["agentkit"]
    branch = f"logs-{uuid.uuid4().hex[:6]}"
    with commit_on_branch(repo, branch, "test: capitals, with an unused import"):
        (repo / "tests" / "unit" / "test_capitals.py").write_text(FAILING_TEST)
        tools = repo / "src" / "agentkit" / "tools.py"
        future = "from __future__ import annotations\n"
        tools.write_text(tools.read_text().replace(future, future + LINT_ERROR))
        (repo / "cicd.yaml").write_text(CONFIG)
    with pytest.raises(PipelineFailed) as failed:
        pr_validation(repo=str(repo), ref=branch)
    APILogHandler().flush()
    commit = failed.value.report.commit
    run_id = uuid.UUID(_latest_run(branch))
    return FailedRun(run_id, branch, commit, failed.value)


def _latest_run(branch: str) -> str:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    async def latest(client: Any) -> str:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"branch:{branch}"])),
            limit=1,
        )
        return str(runs[0].id)

    result: str = read(latest)
    return result


def _wait_for_logs(run_id: uuid.UUID, needed: list[str], seconds: float = 60) -> list[str]:
    import time

    end = time.monotonic() + seconds
    while True:
        logs = run_logs(run_id)
        text = "\n".join(logs)
        if all(n in text for n in needed) or time.monotonic() > end:
            return logs
        time.sleep(1)


@pytest.mark.slow
def test_a_run_is_named_and_tagged_by_repo_branch_and_commit(failed_run: FailedRun) -> None:
    run = read(lambda client: client.read_flow_run(failed_run.id))
    assert run.name == f"pr-validation · agentkit@{failed_run.branch} · {failed_run.commit[:7]}"
    assert {"repo:agentkit", f"branch:{failed_run.branch}", "event:manual"} <= set(run.tags)


@pytest.mark.slow
def test_task_runs_are_named_after_their_jobs_in_pipeline_order(failed_run: FailedRun) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    task_runs = read(
        lambda client: client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[failed_run.id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    )
    names = [t.name for t in task_runs]
    jobs = [name for name in names if name in ("quality", "unit")]
    assert jobs == ["quality", "unit"], names
    checkout = next(i for i, name in enumerate(names) if name.startswith("checkout"))
    assert names.index("quality") > checkout


@pytest.mark.slow
def test_a_failed_runs_logs_say_which_test_failed_and_why(failed_run: FailedRun) -> None:
    logs = _wait_for_logs(failed_run.id, [FAILING_ID, ASSERTION, "quality failed"])
    text = "\n".join(logs)
    # The failing test's id and its assertion message, from the step's own output.
    assert FAILING_ID in text and ASSERTION in text
    headline = next(m for m in logs if m.startswith("unit failed:"))
    assert FAILING_ID.split("::")[-1] in headline.splitlines()[0]
    # Every step logged its command; its output came line by line.
    assert any("[unit:pytest]: $ " in m and "pytest" in m for m in logs)
    assert any(m.startswith("[quality:ruff] | ") for m in logs)
    # No repr of a result, no traceback of an expected failure.
    assert "JobResult(" not in text and "StepResult(" not in text
    assert "NoneType: None" not in text and "Traceback (most recent call last)" not in text


@pytest.mark.slow
def test_the_flow_state_message_names_the_failed_jobs_in_one_line(failed_run: FailedRun) -> None:
    run = read(lambda client: client.read_flow_run(failed_run.id))
    message = run.state.message
    assert "\n" not in message
    assert message.startswith("quality failed: ruff"), message
    assert "unit failed: 1 failed (" in message and "test_agent_knows_capitals" in message
    assert message == str(failed_run.failure)


@pytest.mark.slow
def test_browser_shows_the_failed_run_with_its_name_and_failing_test(
    failed_run: FailedRun, prefect_server: str
) -> None:
    from tests.browser import chromium_page, chromium_path

    if chromium_path() is None:
        pytest.fail("chromium is missing: scripts/test installs Debian's chromium")
    _wait_for_logs(failed_run.id, [FAILING_ID, ASSERTION])
    ui = prefect_server.removesuffix("/api")
    name = f"agentkit@{failed_run.branch} · {failed_run.commit[:7]}"
    # Tall enough for the header and both failed jobs' logs in one screenshot.
    with chromium_page(height=2300) as page:
        page.navigate(f"{ui}/runs/flow-run/{failed_run.id}")
        # The header: the run's name with its branch and commit, and its state.
        header = page.wait_for_text(lambda t: name in t and "Failed" in t, seconds=90)
        assert "pr-validation" in header
        # Its logs, at "Error and above" as one looks for why a run failed: the
        # failing test's id and its assertion message, under the header.
        assert page.choose("Error and above")
        text = page.wait_for_text(
            lambda t: FAILING_ID in t and ASSERTION in t and "[quality:ruff] |" not in t,
            seconds=60,
        )
        assert "unit failed: 1 failed (tests.unit.test_capitals::test_agent_knows_capitals" in text
        page.screenshot(REPO_ROOT / "docs" / "failed-run.png")
    assert (REPO_ROOT / "docs" / "failed-run.png").stat().st_size > 10_000


def test_the_worker_of_cicd_up_sends_info_logs_to_the_ui(tmp_path: Path) -> None:
    """`cicd` sets WARNING for its terminal; the worker's flow runs must not inherit it."""
    from deployments.stack_processes import worker_env

    env = worker_env("http://127.0.0.1:1/api", tmp_path, {"PREFECT_LOGGING_LEVEL": "WARNING"})
    assert env["PREFECT_LOGGING_LEVEL"] == "INFO"


def test_a_huge_report_is_masked_without_reading_it_whole(tmp_path: Path) -> None:
    """The JUnit XML of a test that printed its output (``junit_logging``) can be
    as large as that output: masked a piece at a time, secrets across the file."""
    from cicd import masking

    secret = f"pw-{uuid.uuid4().hex}"
    masking.register([secret])
    report = tmp_path / "junit.xml"
    line = "x" * 99 + "\n"
    with report.open("w") as handle:
        handle.write(f"<testsuite>{secret}\n")
        for _ in range(20):
            handle.write(line * 10_000)
            handle.write(f"near {secret} here\n")
        # A secret in a long run without newline, across where a piece is cut.
        handle.write("y" * (4 * 2**20 - 10) + secret + "y" * 5_000_000 + secret + "</testsuite>")
    size = report.stat().st_size
    tracemalloc.start()
    try:
        masking.mask_file(report)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = report.read_text()
    assert secret not in text and text.count("near *** here") == 20, text[:200]
    assert text.startswith("<testsuite>***\n") and text.endswith("***</testsuite>")
    assert text.count("y***y") == 1
    assert abs(report.stat().st_size - size) < 24 * len(secret)
    assert peak < 3 * 9_000_000 + 2**23, (
        f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"
    )


def test_a_run_of_head_is_named_after_the_branch_head_names(tmp_path: Path) -> None:
    import subprocess

    from cicd.git import Checkout
    from flows.run_names import branch_label, named_ref

    repo = tmp_path / "repo"
    who = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env = {**who, "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    for argv in (["init", "-q", "-b", "trunk", str(repo)],
                 ["-C", str(repo), "commit", "-q", "--allow-empty", "-m", "one"]):  # fmt: skip
        subprocess.run(["git", *argv], check=True, env=env, timeout=60)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True, env=env).stdout.strip()  # fmt: skip
    head = Checkout(repo=str(repo), ref="HEAD", commit=commit, path=repo, mirror=repo)

    assert branch_label(named_ref(head)) == "trunk"
    assert named_ref(dataclasses.replace(head, ref="feature")) == "feature"
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "--detach"], check=True, env=env)
    assert named_ref(head) == "HEAD"


def test_a_run_name_keeps_one_short_line_whatever_the_parameters() -> None:
    from flows.run_names import shown_label

    name = run_name("pr-validation", "x" * 5000, "main\nrm -rf", "1a2b3c4d5e")
    assert len(name) < 200 and "\n" not in name and "x" * 100 not in name
    assert name.endswith("@main rm -rf · 1a2b3c4")
    assert shown_label("https://h/a\x1b[2Jb") == "https://h/a [2Jb"
    assert shown_label("acme/app") == "acme/app"
