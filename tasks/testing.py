"""Test jobs: pytest with JUnit XML and coverage JSON, parsed into counts.

Like the seed's ``unit-tests`` and ``framework-tests`` jobs. Services and the
LLM gateway are started by the caller, which passes their connection
variables in ``extra_env``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from cicd import git, masking
from cicd.config import EnvironmentConfig, PipelineConfig, ServiceConfig, SuiteConfig
from cicd.errors import CicdError, ConfigError
from cicd.pytest_config import find_pytest_config
from cicd.results import JobResult, JobState, StepResult
from tasks import coverage_run, sharding
from tasks.coverage_run import parse_coverage
from tasks.environments import Environment, InterpreterMissing, ensure_environment
from tasks.job import (
    Deadline,
    JobContext,
    JobInputs,
    JobSkipped,
    failure_reason,
    run_step,
)
from tasks.pytest_outcome import NO_TESTS_COLLECTED, ReportError, exit_reason, parse_junit

__all__ = ["ReportError", "parse_coverage", "parse_junit", "pytest_argv", "run_suite"]

# Not imported: run by the project's interpreter (its docstring says why).
UNITTEST_RUNNER = Path(__file__).with_name("unittest_junit.py")


def pytest_argv(
    python: Path,
    suite: SuiteConfig,
    junit_path: Path,
    coverage: bool = False,
    shard: Sequence[str] | None = None,
) -> list[str]:
    """The test command: pytest, under ``coverage run`` when the suite measures.

    No path unless cicd.yaml names one: pytest's own configuration (testpaths,
    rootdir) decides what it collects, as in the project's own CI. A ``shard``
    runs its files instead, its coverage data in a file of its own.
    A ``unittest`` suite runs ``tasks/unittest_junit.py`` instead (``unittest_argv``).
    """
    if suite.runner == "unittest":
        return unittest_argv(python, suite, junit_path, coverage)
    start = coverage_run.run_argv(python, suite, parallel=shard is not None) if coverage else []
    argv = [
        *(start or [str(python), "-m"]),
        "pytest",
        *(suite.paths if shard is None else shard),
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit_path}",
        "-o",
        "junit_family=xunit2",
    ]
    if suite.markers:
        argv += ["-m", suite.markers]
    return argv + list(suite.args)


def unittest_argv(
    python: Path, suite: SuiteConfig, junit_path: Path, coverage: bool = False
) -> list[str]:
    """``python [-m coverage run] <reports>/unittest_junit.py [paths] --junitxml=..``:
    the runner is copied beside the report (``install_unittest_runner``), where the
    job's box lets the step read it (cicd/sandbox_step.py, reports directories)."""
    start = coverage_run.run_argv(python, suite, module=False) if coverage else [str(python)]
    runner = junit_path.parent / UNITTEST_RUNNER.name
    return [*start, str(runner), *suite.paths, f"--junitxml={junit_path}"]


def install_unittest_runner(reports_dir: Path) -> None:
    shutil.copyfile(UNITTEST_RUNNER, reports_dir / UNITTEST_RUNNER.name)


def _where(workspace: Path, suite: SuiteConfig) -> str:
    """Where pytest looked for tests, for the "collected no tests" reason."""
    if suite.paths:
        where = " ".join(suite.paths)
    elif suite.runner == "unittest":
        where = "the repository (unittest discovery, test*.py)"
    else:
        try:
            where = find_pytest_config(workspace).describe()
        except ConfigError as exc:  # pytest said what it thinks of the file
            where = f"the repository ({exc})"
    return where + (f" with -m {suite.markers!r}" if suite.markers else "")


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
    measures = bool(suite.coverage)
    coverage_path = reports_dir / f"coverage-{name}.json" if measures else None
    html_dir = reports_dir / f"coverage-html-{name}" if coverage_path and coverage_html else None
    data = coverage_run.data_file(reports_dir, name)
    for stale in (junit_path, coverage_path, *coverage_run.stale_data(reports_dir, name)):
        if stale is not None:
            stale.unlink(missing_ok=True)
    environ = env.environ({**suite.env, **(extra_env or {})})
    if measures:
        # Over the configuration's data_file: this job's reports hold its data.
        environ["COVERAGE_FILE"] = str(data)
    before: tuple[StepResult, ...] = ()
    step = None
    if sharding.shard_count(suite.parallel) > 1:
        before, step = _sharded_pytest(
            name, workspace, env.python, suite, junit_path, environ, deadline, log_path,
            measures,
        )  # fmt: skip
    if suite.runner == "unittest":
        install_unittest_runner(reports_dir)
    status = None
    if step is None:
        argv = shown = pytest_argv(env.python, suite, junit_path, coverage=measures)
        if coverage_path is not None:
            status = reports_dir / f"coverage-status-{name}.json"
            argv = coverage_run.reporting_in_process(
                argv, data, coverage_path, html_dir, suite, status
            )
        step = run_step(
            suite.runner,
            argv,
            cwd=workspace,
            env=environ,
            deadline=deadline,
            log_path=log_path,
            shown=" ".join(shown) + (" (coverage reports in the same process)" if status else ""),
        )
    # A test may print a secret it was given (a service password): the report
    # keeps no trace of it, on disk or in the counts' messages.
    masking.mask_file(junit_path)
    tests = parse_junit(junit_path) if junit_path.is_file() else None
    steps: tuple[StepResult, ...] = (*before, step)
    reasons: list[str] = []
    state = JobState.PASSED
    if step.timed_out:
        state, reasons = JobState.TIMED_OUT, [failure_reason([step], deadline)]
    elif step.returncode == NO_TESTS_COLLECTED and suite.allow_empty:
        reasons = [f"collected no tests from {_where(workspace, suite)} (allow_empty)"]
    elif step.returncode != 0:
        state = JobState.FAILED
        where = _where(workspace, suite)
        reasons = [exit_reason(step.returncode, tests, step.output_tail, where)]
    coverage = None
    if measures and coverage_path is not None and not step.timed_out:
        measured = None
        if status is not None:
            measured = coverage_run.in_process_outcome(
                status, suite, workspace, coverage_path, log_path
            )
        if measured is None:
            measured = coverage_run.report(
                env.python, suite, workspace, environ, data, coverage_path, html_dir, deadline,
                log_path,
            )  # fmt: skip
        steps += measured.steps
        coverage = measured.percent
        # "No data" after a run that collected nothing says nothing more.
        if measured.reason and (measured.percent is not None or step.returncode == 0):
            reasons.append(measured.reason)
            state = JobState.FAILED if state is JobState.PASSED else state
        if any(s.timed_out for s in measured.steps):
            state = JobState.TIMED_OUT
    details = {"junit": str(junit_path)}
    if coverage_path is not None:
        details["coverage"] = str(coverage_path)
    if html_dir is not None and html_dir.is_dir():
        details["coverage_html"] = str(html_dir / "index.html")
    return JobResult(
        name=name,
        state=state,
        duration=time.monotonic() - started,
        steps=steps,
        tests=tests,
        coverage_percent=coverage,
        reason="; ".join(reasons),
        details=details,
    )


def _project_identity(workspace: Path) -> str:
    """The project's root commit(s): the same across its commits and branches,
    so durations recorded on one commit balance the shards of the next."""
    try:
        return git.run_in(workspace, "rev-list", "--max-parents=0", "HEAD")
    except CicdError:
        return str(workspace)


def _sharded_pytest(
    name: str,
    workspace: Path,
    python: Path,
    suite: SuiteConfig,
    junit_path: Path,
    environ: dict[str, str],
    deadline: Deadline,
    log_path: Path | None,
    measures: bool,
) -> tuple[tuple[StepResult, ...], StepResult | None]:
    """The collection step and one step standing for every shard, or (steps,
    None) when the suite cannot be sharded here (a collection that fails is
    then reported by the unsharded run, as pytest reports it)."""
    listing = junit_path.with_name(f"collected-{name}.tsv")
    collect = run_step(
        "pytest --collect-only",
        sharding.collect_argv(python, listing, suite),
        cwd=workspace,
        env=environ,
        deadline=deadline,
        log_path=log_path,
    )
    if not collect.ok or not listing.is_file() or sharding.args_name_paths(suite, workspace):
        return (collect,), None
    files = sharding.read_listing(listing)
    record = sharding.durations_path(_project_identity(workspace), name)
    recorded = sharding.load_durations(record)
    shards = sharding.plan(files, recorded, sharding.shard_count(suite.parallel))
    if len(shards) < 2:
        return (collect,), None
    parts = [junit_path.with_name(f"{junit_path.stem}.shard{i}.xml") for i in range(len(shards))]

    def run_one(index: int, shard: Sequence[str]) -> StepResult:
        parts[index].unlink(missing_ok=True)
        return run_step(
            f"pytest shard {index + 1}/{len(shards)}",
            pytest_argv(python, suite, parts[index], coverage=measures, shard=shard),
            cwd=workspace,
            env=environ,
            deadline=deadline,
            log_path=log_path,
        )

    started = time.monotonic()
    results = sharding.run_shards(shards, run_one)
    sharding.merge_junit(parts, junit_path)
    sharding.save_durations(record, recorded, sharding.file_durations(parts, files))
    code = sharding.combined_returncode([r.returncode for r in results])
    worst = next((r for r in results if r.returncode == code), results[0])
    combined = StepResult(
        "pytest",
        f"{len(shards)} shards of {sum(len(s) for s in shards)} files",
        code,
        time.monotonic() - started,
        timed_out=any(r.timed_out for r in results),
        output_tail=worst.output_tail,
    )
    return (collect, *results), combined


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
    # 2: coverage run instead of pytest-cov, errors and the coverage bar apart.
    version: ClassVar[str] = "2"

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
    version: ClassVar[str] = "2"

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
