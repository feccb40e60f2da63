"""What a pipeline produces: per-job results and the run's report.

Plain dataclasses, so the logic that builds them is testable without Prefect
and the CLI can print them as JSON.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from cicd import masking
from cicd.errors import CicdError

# A job's headline names at most this many failed tests, in at most this many characters.
HEADLINE_TESTS = 3
HEADLINE_CHARS = 400
HEADLINE_MESSAGE_CHARS = 100


class JobState(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    CACHED = "cached"
    # Our side failed (a bug, or infrastructure after its retries): no verdict on the target.
    ERRORED = "errored"
    # Stopped before its end (the run was cancelled): no verdict either.
    CANCELLED = "cancelled"

    @property
    def ok(self) -> bool:
        return self in (JobState.PASSED, JobState.SKIPPED, JobState.CACHED)


@dataclass(frozen=True)
class StepResult:
    name: str
    command: str
    returncode: int
    duration: float
    timed_out: bool = False
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class TestFailure:
    # Not a pytest test class, whatever its name says.
    __test__ = False

    name: str
    message: str


def _named(failure: TestFailure) -> str:
    """``tests.x::test_y: first line of its message`` (cut), for a headline."""
    lines = failure.message.strip().splitlines()
    message = lines[0] if lines else ""
    if len(message) > HEADLINE_MESSAGE_CHARS:
        message = message[: HEADLINE_MESSAGE_CHARS - 3] + "..."
    return f"{failure.name}: {message}" if message else failure.name


@dataclass(frozen=True)
class TestCounts:
    __test__ = False

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: tuple[TestFailure, ...] = ()
    # Of ``errors``, the modules pytest could not collect (import errors).
    collection_errors: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped


@dataclass(frozen=True)
class JobResult:
    name: str
    state: JobState
    duration: float
    steps: tuple[StepResult, ...] = ()
    tests: TestCounts | None = None
    coverage_percent: float | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    # A markdown section for the run summary (benchmark comparison, LLM usage).
    section: str = ""
    # The flow run that computed this result: another run's when it is served from the cache.
    origin: str = ""

    def headline(self) -> str:
        """The job's end in one line: ``unit failed: 1 failed (tests/x.py::test_y)``."""
        words = self.state.value.replace("_", " ")
        detail = " ".join(self.reason.split())  # one line, whatever the reason held
        if self.tests is not None and self.tests.failures and not self.state.ok:
            names = [_named(failure) for failure in self.tests.failures[:HEADLINE_TESTS]]
            more = len(self.tests.failures) - len(names)
            shown = ", ".join(names) + (f" and {more} more" if more > 0 else "")
            detail = f"{detail} ({shown})" if detail else shown
        elif self.tests is not None and self.state.ok:
            detail = f"{self.tests.passed} passed" + (f"; {detail}" if detail else "")
        headline = f"{self.name} {words}" + (f": {detail}" if detail else "")
        if len(headline) > HEADLINE_CHARS:
            headline = headline[: HEADLINE_CHARS - 3] + "..."
        return masking.mask(headline)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "state": self.state.value,
            "duration": round(self.duration, 3),
        }
        if self.reason:
            data["reason"] = self.reason
        if self.state is JobState.CACHED:
            # The duration above is the original run's: nothing ran this time.
            data["cached_from"] = {"flow_run": self.origin, "duration": round(self.duration, 3)}
            data.update(cached=True, original_duration=data["duration"])
        if self.tests is not None:
            # Failed tests, errors (set-up, tear-down, collection) apart, as pytest counts them.
            data.update(
                passed=self.tests.passed,
                failed=self.tests.failed,
                errors=self.tests.errors,
                collection_errors=self.tests.collection_errors,
                skipped=self.tests.skipped,
                failures=[asdict(f) for f in self.tests.failures],
            )
        if self.coverage_percent is not None:
            data["coverage_percent"] = round(self.coverage_percent, 2)
        if self.steps:
            data["steps"] = [
                {"name": s.name, "returncode": s.returncode, "duration": round(s.duration, 3)}
                for s in self.steps
            ]
        if self.details:
            data["details"] = self.details
        # Secrets in use never leave in a result (--json, flow results, reports).
        return masking.mask_json(data)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class PipelineReport:
    flow: str
    repo: str
    ref: str
    commit: str
    jobs: tuple[JobResult, ...]
    duration: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # Markdown sections appended to the summary (benchmarks, LLM usage, ...).
    sections: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(job.state.ok for job in self.jobs)

    @property
    def state(self) -> str:
        return "passed" if self.passed else "failed"

    def to_json(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "state": self.state,
            "repo": self.repo,
            "ref": self.ref,
            "commit": self.commit,
            "duration": round(self.duration, 3),
            "jobs": [job.to_json() for job in self.jobs],
            **masking.mask_json(self.extra),
        }


class PipelineFailed(CicdError):
    """Raised by a flow whose gate failed; carries the whole report."""

    def __init__(self, report: PipelineReport) -> None:
        self.report = report
        super().__init__(failure_message(report))

    def __reduce__(self) -> tuple[type[PipelineFailed], tuple[PipelineReport]]:
        return (type(self), (self.report,))


def failure_message(report: PipelineReport) -> str:
    """Which jobs failed and why, in one line (the flow run's state message):
    ``unit failed: 1 failed (tests/x.py::test_y); quality failed: ruff (exit 1)``."""
    failed = [job.headline() for job in report.jobs if not job.state.ok]
    return "; ".join(failed) or f"{report.flow} failed"
