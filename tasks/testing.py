"""Test jobs: pytest with JUnit XML and coverage JSON, parsed into counts.

Like the seed's ``unit-tests`` and ``framework-tests`` jobs. Services and the
LLM gateway are started by the caller, which passes their connection
variables in ``extra_env``.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from cicd import masking
from cicd.config import EnvironmentConfig, PipelineConfig, ServiceConfig, SuiteConfig
from cicd.errors import CicdError
from cicd.results import JobResult, JobState, StepResult, TestCounts, TestFailure
from tasks.environments import Environment, InterpreterMissing, ensure_environment
from tasks.job import (
    Deadline,
    JobContext,
    JobInputs,
    JobSkipped,
    failure_reason,
    run_step,
    state_of,
)

# pytest's exit codes (pytest.ExitCode), named for the messages below.
PYTEST_TESTS_FAILED = 1
PYTEST_NO_TESTS = 5
MESSAGE_CHARS = 500


class ReportError(CicdError):
    """A JUnit or coverage report is missing or unreadable."""


def pytest_argv(
    python: Path,
    suite: SuiteConfig,
    junit_path: Path,
    coverage_path: Path | None,
    coverage_html: Path | None = None,
) -> list[str]:
    argv = [
        str(python),
        "-m",
        "pytest",
        *suite.paths,
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit_path}",
        "-o",
        "junit_family=xunit2",
    ]
    if suite.markers:
        argv += ["-m", suite.markers]
    if coverage_path is not None:
        argv += [f"--cov={source}" for source in suite.coverage]
        argv += [f"--cov-report=json:{coverage_path}", "--cov-report=term"]
        if coverage_html is not None:
            argv.append(f"--cov-report=html:{coverage_html}")
    return argv + list(suite.args)


def _first_line(text: str | None) -> str:
    text = (text or "").strip()
    return text.splitlines()[0][:MESSAGE_CHARS] if text else ""


def parse_junit(path: Path) -> TestCounts:
    """Counts and failing tests from a JUnit XML report (pytest's xunit2 flavour)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ReportError(f"cannot read JUnit report {path}: {exc}") from None
    passed = failed = errors = skipped = 0
    failures: list[TestFailure] = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
        outcome = next(
            (child for child in case if child.tag in {"failure", "error", "skipped"}), None
        )
        if outcome is None:
            passed += 1
        elif outcome.tag == "skipped":
            skipped += 1
        else:
            if outcome.tag == "failure":
                failed += 1
            else:
                errors += 1
            message = outcome.get("message") or _first_line(outcome.text)
            failures.append(TestFailure(name, message[:MESSAGE_CHARS]))
    return TestCounts(passed, failed, errors, skipped, tuple(failures))


def parse_coverage(path: Path) -> float:
    """Total line coverage in percent from coverage.py's JSON report."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return float(data["totals"]["percent_covered"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"cannot read coverage report {path}: {exc}") from None


def run_suite(
    name: str,
    workspace: Path,
    env: Environment,
    suite: SuiteConfig,
    reports_dir: Path,
    deadline: Deadline,
    extra_env: dict[str, str] | None = None,
    log_path: Path | None = None,
    coverage_html: bool = False,
) -> JobResult:
    """pytest over one suite, with JUnit and coverage parsed into the result."""
    started = time.monotonic()
    reports_dir.mkdir(parents=True, exist_ok=True)
    junit_path = reports_dir / f"junit-{name}.xml"
    coverage_path = reports_dir / f"coverage-{name}.json" if suite.coverage else None
    html_dir = reports_dir / f"coverage-html-{name}" if coverage_path and coverage_html else None
    for stale in (junit_path, coverage_path):
        if stale is not None:
            stale.unlink(missing_ok=True)
    environ = env.environ({**suite.env, **(extra_env or {})})
    step = run_step(
        "pytest",
        pytest_argv(env.python, suite, junit_path, coverage_path, html_dir),
        cwd=workspace,
        env=environ,
        deadline=deadline,
        log_path=log_path,
    )
    # A test may print a secret it was given (a service password): the report
    # keeps no trace of it, on disk or in the counts' messages.
    masking.mask_file(junit_path)
    tests = parse_junit(junit_path) if junit_path.is_file() else None
    coverage = parse_coverage(coverage_path) if coverage_path and coverage_path.is_file() else None
    state = state_of([step])
    if step.returncode == PYTEST_NO_TESTS:
        reason = f"no tests collected from {', '.join(suite.paths)}"
    elif state is JobState.FAILED and step.returncode == PYTEST_TESTS_FAILED and tests:
        reason = f"{tests.failed + tests.errors} test(s) failed"
    elif state.ok:
        reason = ""
    else:
        reason = failure_reason([step], deadline)
    details = {"junit": str(junit_path)}
    if coverage_path is not None:
        details["coverage"] = str(coverage_path)
    if html_dir is not None and html_dir.is_dir():
        details["coverage_html"] = str(html_dir / "index.html")
    return JobResult(
        name=name,
        state=state,
        duration=time.monotonic() - started,
        steps=(step,),
        tests=tests,
        coverage_percent=coverage,
        reason=reason,
        details=details,
    )


@dataclass(frozen=True)
class SuiteJob:
    """One named test suite (``tests.<name>`` of cicd.yaml) in a ready environment.

    Its services start before it (healthy) and stop after it, whatever happens;
    their start counts in the job's time, as a CI job's service containers do.
    """

    name: str
    suite: SuiteConfig
    env: Environment
    # The configuration of the services this suite uses, by name.
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    source: str | None = None
    # Variables from the run (the LLM gateway's address); part of the inputs.
    extra_env: dict[str, str] = field(default_factory=dict)
    coverage_html: bool = False

    kind: ClassVar[str] = "tests"
    version: ClassVar[str] = "1"

    @property
    def timeout(self) -> float:
        return self.suite.timeout

    def inputs(self) -> JobInputs:
        return JobInputs(
            self.source,
            config=self.suite,
            environment=self.env.key,
            services=self.services,
            extra={"env": self.extra_env, "coverage_html": self.coverage_html},
        )

    def run(self, context: JobContext) -> JobResult:
        return run_with_services(
            self.name, context, self.env, self.suite, self.services, self.extra_env,
            self.coverage_html,
        )  # fmt: skip


def run_with_services(
    name: str,
    context: JobContext,
    env: Environment,
    suite: SuiteConfig,
    services: dict[str, ServiceConfig],
    extra_env: dict[str, str],
    coverage_html: bool = False,
) -> JobResult:
    reports = context.run.reports
    if not suite.services:
        return run_suite(
            name, context.workspace, env, suite, reports, context.deadline, extra_env,
            context.log(name), coverage_html,
        )  # fmt: skip
    # Imported here: the service layer pulls in the Neo4j driver, which jobs
    # without services do not need.
    from tasks.services import running_services, service_slots

    started = time.monotonic()
    with (
        service_slots([(s, services[s]) for s in suite.services if s in services]),
        running_services(services, suite.services, reports / f"services-{name}") as service_env,
    ):
        # The job's time includes waiting for a slot and the health check, as a
        # CI job's includes its service containers; the step says how much.
        services_step = StepResult(
            "services", " ".join(suite.services), 0, time.monotonic() - started
        )
        result = run_suite(
            name, context.workspace, env, suite, reports, context.deadline,
            {**service_env, **extra_env}, context.log(name), coverage_html,
        )  # fmt: skip
    return replace(
        result, duration=time.monotonic() - started, steps=(services_step, *result.steps)
    )


def suite_jobs(
    config: PipelineConfig,
    names: Iterable[str],
    env: Environment,
    source: str | None = None,
    llm_env: dict[str, str] | None = None,
    coverage_html: bool = False,
) -> list[SuiteJob]:
    """One job per suite; the LLM variables go only to suites that need an LLM,
    whose answers are never cached."""
    jobs = []
    for name in names:
        suite = config.tests[name]
        jobs.append(
            SuiteJob(
                name=name,
                suite=suite,
                env=env,
                services={s: config.services[s] for s in suite.services if s in config.services},
                source=None if suite.llm else source,
                extra_env=dict(llm_env or {}) if suite.llm else {},
                coverage_html=coverage_html,
            )
        )
    return jobs


@dataclass(frozen=True)
class MatrixJob:
    """One matrix entry: its own environment on one Python version, then the suite.

    A version whose interpreter this worker lacks is reported as skipped with
    that reason, never silently dropped.
    """

    name: str
    env_config: EnvironmentConfig
    packages: tuple[str, ...]
    suite: SuiteConfig
    services: dict[str, ServiceConfig] = field(default_factory=dict)

    kind: ClassVar[str] = "matrix"
    version: ClassVar[str] = "1"

    @property
    def timeout(self) -> float:
        return self.env_config.timeout + self.suite.timeout

    def inputs(self) -> JobInputs:
        # A matrix entry runs afresh every night: never cached.
        return JobInputs(
            None,
            config=self.suite,
            services=self.services,
            extra={"environment": self.env_config, "packages": self.packages},
        )

    def run(self, context: JobContext) -> JobResult:
        started = time.monotonic()
        log_path = context.log(self.name)
        try:
            env = ensure_environment(
                context.workspace, self.env_config, list(self.packages), log_path
            )
        except InterpreterMissing as exc:
            raise JobSkipped(str(exc)) from None
        result = run_with_services(self.name, context, env, self.suite, self.services, {})
        return replace(result, duration=time.monotonic() - started)
