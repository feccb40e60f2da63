"""The job model: cache keys from declared inputs, and what may be cached.

The flow tests run a small job of their own (``ScriptJob``, a real
implementation of the Job protocol running a real process) through the one
task factory against the session's Prefect server; every run appends to a
counter file, so "served from the cache" and "ran again" are told apart by
what happened, not by the state name alone.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cicd import command
from cicd.config import (
    BenchmarkConfig,
    EnvironmentConfig,
    QualityConfig,
    ReleaseConfig,
    ServiceConfig,
    SuiteConfig,
    ToolConfig,
)
from cicd.results import JobResult, JobState
from tasks import job_runner
from tasks.all_jobs import JOB_KINDS
from tasks.benchmarks import BenchmarkJob
from tasks.environments import Environment
from tasks.job import Job, JobContext, JobInputs, JobSkipped, failure_reason, run_step, state_of
from tasks.job_runner import cache_key
from tasks.quality import QualityJob
from tasks.release_jobs import BuildJob, PublishJob
from tasks.testing import MatrixJob, SuiteJob
from tasks.usage import LlmBudgetJob

SYSTEM_PYTHON = "/usr/bin/python3"
ENV = Environment(path=Path("/envs/a"), python_version="3.11", key="env-1", reused=True)
SUITE = SuiteConfig(paths=["tests/unit"])
NEO4J = {"neo4j": ServiceConfig()}

# One example of every kind of job, and for the cacheable ones the changes of
# each declared input that must change the key.
EXAMPLES: dict[str, Any] = {
    "quality": QualityJob(QualityConfig(ruff=ToolConfig(paths=["src"])), ENV, source="abc"),
    "tests": SuiteJob("unit", SUITE, ENV, services=NEO4J, source="abc"),
    "matrix": MatrixJob("matrix-py3.12", EnvironmentConfig(python="3.12"), ("pytest",), SUITE),
    "benchmarks": BenchmarkJob(Path("/envs/a/bin/python"), BenchmarkConfig(paths=["tests/perf"])),
    "build": BuildJob(Path("/run/dist"), 1_700_000_000, "v1.0.0"),
    "publish": PublishJob((Path("/run/dist/a.whl"),), ReleaseConfig(), "http://index/", False),
    "llm-budget": LlmBudgetJob(session=None, tests_passed=True),  # type: ignore[arg-type]
}
INPUT_CHANGES: dict[str, dict[str, Any]] = {
    "quality": {
        "source": "abd",
        "config": QualityConfig(ruff=ToolConfig(paths=["src", "tests"])),
        "env": dataclasses.replace(ENV, key="env-2"),
        # The pinned tool versions (another rev of the ruff hook).
        "tools": ("ruff==0.4.1",),
    },
    "tests": {
        "source": "abd",
        "suite": SuiteConfig(paths=["tests/unit"], markers="not slow"),
        "env": dataclasses.replace(ENV, key="env-2"),
        "services": {"neo4j": ServiceConfig(password="another-password")},
        "extra_env": {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"},
        "coverage_html": True,
        "name": "unit-2",
    },
}


def test_every_kind_of_job_has_an_example() -> None:
    assert set(EXAMPLES) == set(JOB_KINDS)
    for kind, job in EXAMPLES.items():
        assert type(job) is JOB_KINDS[kind] and job.kind == kind


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [(kind, *change) for kind, changes in INPUT_CHANGES.items() for change in changes.items()],
)
def test_the_cache_key_follows_each_declared_input(kind: str, field: str, value: Any) -> None:
    job = EXAMPLES[kind]
    key = cache_key(job)
    assert key is not None and key == cache_key(dataclasses.replace(job))
    assert cache_key(dataclasses.replace(job, **{field: value})) != key


@pytest.mark.parametrize("kind", sorted(INPUT_CHANGES))
def test_the_cache_key_follows_implementation_and_result_versions(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = EXAMPLES[kind]
    key = cache_key(job)
    monkeypatch.setattr(type(job), "version", job.version + "-next")
    bumped = cache_key(job)
    monkeypatch.setattr(job_runner, "RESULT_VERSION", "next")
    assert len({key, bumped, cache_key(job)}) == 3


def test_the_cache_key_never_depends_on_where_a_worker_keeps_its_environment() -> None:
    job = EXAMPLES["tests"]
    moved = dataclasses.replace(job, env=dataclasses.replace(ENV, path=Path("/elsewhere")))
    assert cache_key(moved) == cache_key(job)


@pytest.mark.parametrize("kind", sorted(set(EXAMPLES) - set(INPUT_CHANGES)))
def test_jobs_that_must_run_afresh_have_no_cache_key(kind: str) -> None:
    assert cache_key(EXAMPLES[kind]) is None


def test_a_suite_that_talks_to_an_llm_is_never_cached() -> None:
    from cicd.config import PipelineConfig
    from tasks.testing import suite_jobs

    config = PipelineConfig.model_validate(
        {"tests": {"unit": {"paths": ["t"]}, "agents": {"paths": ["t"], "llm": True}}}
    )
    jobs = {job.name: job for job in suite_jobs(config, ["unit", "agents"], ENV, source="abc")}
    assert cache_key(jobs["unit"]) is not None
    assert cache_key(jobs["agents"]) is None


# ------------------------------------------------------------------ through Prefect


@dataclasses.dataclass(frozen=True)
class ScriptJob:
    """Runs ``python -c script``; a raising script or a sleeping one as asked."""

    name: str
    script: str
    source: str | None
    counter: Path
    timeout: float = 30.0
    raises: type[Exception] | None = None

    kind: ClassVar[str] = "script"
    version: ClassVar[str] = "1"

    def inputs(self) -> JobInputs:
        return JobInputs(self.source, config={"script": self.script})

    def run(self, context: JobContext) -> JobResult:
        with self.counter.open("a") as handle:
            handle.write("ran\n")
        if self.raises is not None:
            raise self.raises("raised on purpose")
        step = run_step(
            "script",
            # The system's interpreter: a job step sees /usr, not cicd-flows' own
            # environment (cicd/sandbox.py).
            [SYSTEM_PYTHON, "-c", self.script],
            cwd=context.workspace,
            env=dict(os.environ),
            deadline=context.deadline,
        )
        state = state_of([step])
        reason = "" if state.ok else failure_reason([step], context.deadline)
        return JobResult(self.name, state, step.duration, steps=(step,), reason=reason)


def run_in_flow(job: Job, workspace: Path) -> JobResult:
    from prefect import flow

    from cicd.runs import pipeline_run

    @flow(name="job-model-test")
    def one_job(job: Any) -> JobResult:
        with pipeline_run("job-model-test") as run:
            return job_runner.run_job(job, run, workspace)

    return one_job(job)


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def script_job(tmp_path: Path, script: str, **options: Any) -> ScriptJob:
    # A source of its own: no other test's result can be under this key.
    return ScriptJob("script", script, uuid.uuid4().hex, tmp_path / "counter", **options)


pytestmark_prefect = pytest.mark.usefixtures("prefect_server")


@pytestmark_prefect
def test_a_passing_job_is_cached_and_says_so(tmp_path: Path) -> None:
    job = script_job(tmp_path, "import time; time.sleep(0.3)")

    first = run_in_flow(job, tmp_path)
    second = run_in_flow(job, tmp_path)

    assert first.state is JobState.PASSED and runs(job.counter) == 1
    assert second.state is JobState.CACHED
    assert "cache" in second.reason
    # The original duration and the run that computed it.
    assert second.duration == first.duration >= 0.3
    assert second.origin == first.origin != ""
    assert second.to_json()["cached_from"] == {
        "flow_run": first.origin,
        "duration": round(first.duration, 3),
    }


@pytestmark_prefect
def test_a_failed_job_runs_again_and_fails_again(tmp_path: Path) -> None:
    job = script_job(tmp_path, "raise SystemExit(3)")

    results = [run_in_flow(job, tmp_path) for _ in range(2)]

    assert [r.state for r in results] == [JobState.FAILED, JobState.FAILED]
    assert runs(job.counter) == 2


@pytestmark_prefect
def test_a_timed_out_job_is_not_cached(tmp_path: Path) -> None:
    job = script_job(tmp_path, "import time; time.sleep(30)", timeout=0.5)

    results = [run_in_flow(job, tmp_path) for _ in range(2)]

    assert [r.state for r in results] == [JobState.TIMED_OUT, JobState.TIMED_OUT]
    assert runs(job.counter) == 2


@pytestmark_prefect
def test_a_job_cancelled_mid_run_is_not_cached(tmp_path: Path) -> None:
    job = script_job(tmp_path, "import time; time.sleep(30)")
    # What a cancelled run's teardown does while its jobs still run.
    teardown = threading.Timer(1.5, command.kill_all, kwargs={"close": True})
    teardown.start()
    try:
        cancelled = run_in_flow(job, tmp_path)
    finally:
        teardown.cancel()
        command.reopen()
    quick = dataclasses.replace(job, timeout=0.5)  # same inputs: the timeout is not one

    again = run_in_flow(quick, tmp_path)

    assert cancelled.state is JobState.CANCELLED and "cancelled" in cancelled.reason
    assert again.state is JobState.TIMED_OUT
    assert runs(job.counter) == 2


@pytestmark_prefect
@pytest.mark.parametrize(
    ("raises", "state"), [(JobSkipped, JobState.SKIPPED), (ValueError, JobState.ERRORED)]
)
def test_skipped_and_errored_jobs_are_not_cached(
    tmp_path: Path, raises: type[Exception], state: JobState
) -> None:
    job = script_job(tmp_path, "pass", raises=raises)

    results = [run_in_flow(job, tmp_path) for _ in range(2)]

    assert [r.state for r in results] == [state, state]
    assert runs(job.counter) == 2
    if state is JobState.ERRORED:
        assert results[0].reason.startswith("internal error: ValueError: raised on purpose")


@pytestmark_prefect
def test_a_new_implementation_version_is_not_served_an_old_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = script_job(tmp_path, "pass")
    assert run_in_flow(job, tmp_path).state is JobState.PASSED
    assert run_in_flow(job, tmp_path).state is JobState.CACHED

    monkeypatch.setattr(ScriptJob, "version", "2")

    assert run_in_flow(job, tmp_path).state is JobState.PASSED
    assert runs(job.counter) == 2


@pytestmark_prefect
def test_bad_input_found_by_a_job_stops_the_pipeline(tmp_path: Path) -> None:
    from cicd.errors import BadInput

    job = script_job(tmp_path, "pass", raises=BadInput)

    with pytest.raises(BadInput, match="raised on purpose"):
        run_in_flow(job, tmp_path)
    assert runs(job.counter) == 1  # not retried: only infrastructure errors are
