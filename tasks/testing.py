"""Test jobs: pytest with JUnit XML and coverage JSON, parsed into counts.

Like the seed's ``unit-tests`` and ``framework-tests`` jobs. Services and the
LLM gateway are started by the caller, which passes their connection
variables in ``extra_env``.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task

from cicd.changes import job_cache_key
from cicd.config import EnvironmentConfig, PipelineConfig, ServiceConfig, SuiteConfig
from cicd.errors import CicdError
from cicd.results import JobResult, JobState, StepResult, TestCounts, TestFailure
from tasks.environments import Environment, InterpreterMissing, ensure_environment
from tasks.jobs import (
    Deadline,
    JobFuture,
    JobOutcome,
    failure_reason,
    job_outcome,
    run_step,
    state_of,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cicd.runs import PipelineRun

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
    extra_env: dict[str, str] | None = None,
    log_path: Path | None = None,
    coverage_html: bool = False,
) -> JobResult:
    started = time.monotonic()
    deadline = Deadline(suite.timeout)
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


@task(
    name="tests",
    cache_key_fn=job_cache_key,
    persist_result=True,
    cache_expiration=timedelta(days=7),
)
def test_job(
    name: str,
    workspace: Path,
    env: Environment,
    suite: SuiteConfig,
    services: dict[str, ServiceConfig],
    reports_dir: Path,
    extra_env: dict[str, str] | None = None,
    log_path: Path | None = None,
    coverage_html: bool = False,
    inputs_key: str | None = None,
) -> JobOutcome:
    """One test suite; its services start before it (healthy) and stop after it, always.

    ``inputs_key`` (the source fingerprint) turns on caching: same inputs, same
    result. Flows whose point is a fresh run (nightly, release) leave it unset.
    """
    return job_outcome(
        run_suite_with_services(
            name, workspace, env, suite, services, reports_dir, extra_env, log_path, coverage_html
        )
    )


def run_suite_with_services(
    name: str,
    workspace: Path,
    env: Environment,
    suite: SuiteConfig,
    services: dict[str, ServiceConfig],
    reports_dir: Path,
    extra_env: dict[str, str] | None = None,
    log_path: Path | None = None,
    coverage_html: bool = False,
) -> JobResult:
    if not suite.services:
        return run_suite(
            name, workspace, env, suite, reports_dir, extra_env, log_path, coverage_html
        )
    # Imported here: the service layer pulls in the Neo4j driver, which jobs
    # without services do not need.
    from tasks.services import neo4j_slot, running_services

    started = time.monotonic()
    with (
        neo4j_slot(),
        running_services(services, suite.services, reports_dir / f"services-{name}") as service_env,
    ):
        # The job's time includes waiting for a slot and the health check, as a
        # CI job's includes its service containers; the step says how much.
        services_step = StepResult(
            "services", " ".join(suite.services), 0, time.monotonic() - started
        )
        result = run_suite(
            name,
            workspace,
            env,
            suite,
            reports_dir,
            {**service_env, **(extra_env or {})},
            log_path,
            coverage_html,
        )
    return replace(
        result, duration=time.monotonic() - started, steps=(services_step, *result.steps)
    )


def submit_suites(
    run: PipelineRun,
    workspace: Path,
    env: Environment,
    config: PipelineConfig,
    names: Iterable[str],
    llm_env: dict[str, str] | None = None,
    coverage_html: bool = False,
    inputs_key: str | None = None,
) -> list[tuple[str, JobFuture]]:
    """Start one ``tests-<name>`` task per suite, in parallel; the LLM variables go
    only to suites that need an LLM, whose answers are never cached."""
    futures = []
    for name in names:
        suite = config.tests[name]
        future = test_job.with_options(name=f"tests-{name}").submit(
            name, workspace, env, suite, config.services, run.reports,
            llm_env if suite.llm else None, run.log(name), coverage_html,
            None if suite.llm else inputs_key,
        )  # fmt: skip
        futures.append((name, future))
    return futures


@task(name="matrix")
def matrix_job(
    name: str,
    workspace: Path,
    env_config: EnvironmentConfig,
    packages: list[str],
    suite: SuiteConfig,
    services: dict[str, ServiceConfig],
    reports_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> JobOutcome:
    """One matrix entry: its own environment on one Python version, then the suite.

    A version whose interpreter this worker lacks is reported as skipped with
    that reason, never silently dropped.
    """
    started = time.monotonic()
    log_path = reports_dir.parent / "logs" / f"{name}.log"
    try:
        env = ensure_environment(workspace, env_config, packages, log_path)
    except InterpreterMissing as exc:
        return JobResult(name, JobState.SKIPPED, time.monotonic() - started, reason=str(exc))
    return job_outcome(
        run_suite_with_services(
            name, workspace, env, suite, services, reports_dir, extra_env, log_path
        )
    )
