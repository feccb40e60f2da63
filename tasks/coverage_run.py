"""Coverage as coverage.py measures it: ``coverage run -m pytest``, then its reports.

The project's own figure is what ``coverage run -m pytest; coverage report``
prints from its checkout, so that is what we run, not pytest-cov: coverage
starts before pytest, so a package pytest imports at start-up (a plugin, a
``conftest.py``) has its import-time lines counted, and coverage reads the
project's configuration by its own rules (``cicd/coverage_config.py``):
``source``, ``include``, ``omit``, ``parallel``, ``[paths]``, ``fail_under``.
cicd.yaml ``coverage: [paths]`` become ``--source`` only when given; a
cicd.yaml ``fail_under`` is passed as ``--fail-under``.

The data file is this job's (``COVERAGE_FILE`` in its reports directory, which
coverage reads before the configuration's ``data_file``): parallel data files
(``parallel = true``, subprocesses) are then the ones beside it, and they are
combined before reporting (https://coverage.readthedocs.io/en/latest/cmd.html#cmd-combine),
in one process with the reports (``tasks/coverage_reports.py``). An unsharded
suite runs its tests and those reports in one interpreter
(``reporting_in_process``); its reports are still a step of their own in the
job's result and log, and a process of their own when the tests left that
interpreter unfit for them.
A total under ``fail_under`` is its own failure (coverage's reporting
commands exit 2, https://coverage.readthedocs.io/en/latest/cmd.html#cmd-report),
never a failed test.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cicd import masking
from cicd.command import CommandResult
from cicd.config import SuiteConfig
from cicd.coverage_config import find_coverage_settings
from cicd.results import StepResult
from tasks import progress
from tasks.job import Deadline, run_step
from tasks.pytest_outcome import ReportError
from tasks.step_logs import StepLog, run_logger

# coverage.py's exit status of a reporting command whose total is under fail_under.
FAIL_UNDER = 2
# Not imported: run by the project's interpreter (its docstring says why).
REPORTS_SCRIPT = Path(__file__).with_name("coverage_reports.py")
REPORTS_STEP = "coverage reports"


@dataclass(frozen=True)
class CoverageOutcome:
    steps: tuple[StepResult, ...]
    percent: float | None
    # Empty when the total meets the bar and every report was written.
    reason: str


def run_argv(
    python: Path, suite: SuiteConfig, *, parallel: bool = False, module: bool = True
) -> list[str]:
    """The start of the test command: ``python -m coverage run [--source=..] -m``.

    ``parallel``: one shard of several, whose data goes to a file of its own
    beside the job's data file, combined before the reports. ``module`` False:
    a script's path follows, not ``-m`` and a module.
    """
    argv = [str(python), "-m", "coverage", "run"]
    if parallel:
        argv.append("--parallel-mode")
    if suite.coverage_sources:
        argv.append(f"--source={','.join(suite.coverage_sources)}")
    return [*argv, "-m"] if module else argv


def data_file(reports_dir: Path, name: str) -> Path:
    return reports_dir / f".coverage-{name}"


def stale_data(reports_dir: Path, name: str) -> list[Path]:
    base = data_file(reports_dir, name)
    return [base, *base.parent.glob(f"{base.name}.*")]


def parse_coverage(path: Path) -> float:
    """Total coverage in percent from coverage.py's JSON report."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return float(data["totals"]["percent_covered"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"cannot read coverage report {path}: {exc}") from None


def _detail(step: StepResult) -> str:
    lines = [line.strip() for line in step.output_tail.splitlines() if line.strip()]
    return f"{step.name} (exit {step.returncode})" + (f": {lines[-1][:300]}" if lines else "")


def install_reports_script(reports_dir: Path) -> Path:
    """``tasks/coverage_reports.py`` beside the job's data, where its box lets
    the step read it (as ``tasks/unittest_junit.py``)."""
    target = reports_dir / REPORTS_SCRIPT.name
    shutil.copyfile(REPORTS_SCRIPT, target)
    return target


def _reports_argv(
    python: Path, data: Path, json_path: Path, html_dir: Path | None, suite: SuiteConfig
) -> list[str]:
    argv = [
        str(python),
        str(install_reports_script(data.parent)),
        f"--data-file={data}",
        f"--json={json_path}",
    ]
    if html_dir is not None:
        argv.append(f"--html={html_dir}")
    if suite.fail_under is not None:
        argv.append(f"--fail-under={suite.fail_under:g}")
    return argv


def reporting_in_process(
    test_argv: Sequence[str],
    data: Path,
    json_path: Path,
    html_dir: Path | None,
    suite: SuiteConfig,
    status: Path,
) -> list[str]:
    """``test_argv`` (``python -m coverage run ARGS``) as ``python
    <reports>/coverage_reports.py ... --status=STATUS --run ARGS``: the same
    ``coverage run``, then the reports in that interpreter (their outcome in
    ``status``, read by :func:`in_process_outcome`)."""
    python, *start = test_argv[:4]
    if start != ["-m", "coverage", "run"]:
        raise ValueError(f"not a coverage run: {list(test_argv[:4])}")
    status.unlink(missing_ok=True)
    reports = _reports_argv(Path(python), data, json_path, html_dir, suite)
    return [*reports, f"--status={status}", "--run", *test_argv[4:]]


def in_process_outcome(
    status: Path, suite: SuiteConfig, workspace: Path, json_path: Path, log_path: Path | None
) -> CoverageOutcome | None:
    """The reports made in the test process, as the step they stand for (in the
    job's log and progress as a step of its own would be); None when there are
    none to read, and the reports are then to be made in a process of their own."""
    try:
        record = json.loads(status.read_text(encoding="utf-8"))
        returncode, duration = int(record["returncode"]), float(record["duration"])
        output, failed = str(record["output"]), bool(record["in_process_failed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if failed:
        return None
    if record.get("no_data"):
        return CoverageOutcome((), None, "coverage recorded no data")
    shown = "(in the test process) coverage_reports.py"
    lines = masking.mask(output).splitlines()
    progress.step_started(REPORTS_STEP, shown)
    live = StepLog(progress.current_job() or "job", REPORTS_STEP, shown, log_path, run_logger())
    if log_path is not None:
        with log_path.open("a", encoding="utf-8") as log:
            log.write(f"$ {shown}\n" + "".join(f"{line}\n" for line in lines))
    for line in lines:
        live.line(line)
    live.ended(CommandResult((shown,), returncode, output, duration, lines=len(lines)))
    progress.step_finished(REPORTS_STEP, returncode, duration, False)
    tail = "\n".join(lines[-40:])
    return _outcome(StepResult(REPORTS_STEP, shown, returncode, duration, output_tail=tail),
                    suite, workspace, json_path)  # fmt: skip


def report(
    python: Path,
    suite: SuiteConfig,
    workspace: Path,
    environ: dict[str, str],
    data: Path,
    json_path: Path,
    html_dir: Path | None,
    deadline: Deadline,
    log_path: Path | None,
) -> CoverageOutcome:
    """One step, ``tasks/coverage_reports.py``: combine (when there are parallel
    data files), the JSON report, the terminal report for the log as the
    project's own ``coverage report`` prints it, and HTML when asked."""
    combine = any(data.parent.glob(f"{data.name}.*"))
    if not combine and not data.is_file():
        return CoverageOutcome((), None, "coverage recorded no data")
    # The data file is in the reports directory: the job's box lets the step
    # write there (cicd/sandbox_step.py), as COVERAGE_FILE alone would not.
    argv = _reports_argv(python, data, json_path, html_dir, suite)
    if combine:
        # --append keeps the main process's own data file when there is one.
        argv += ["--combine", *(["--append"] if data.is_file() else [])]
    step = run_step(
        REPORTS_STEP, argv, cwd=workspace, env=environ, deadline=deadline, log_path=log_path
    )
    return _outcome(step, suite, workspace, json_path)


def _outcome(
    step: StepResult, suite: SuiteConfig, workspace: Path, json_path: Path
) -> CoverageOutcome:
    if step.returncode not in (0, FAIL_UNDER) or not json_path.is_file():
        return CoverageOutcome((step,), None, _detail(step))
    percent = parse_coverage(json_path)
    reason = ""
    if step.returncode == FAIL_UNDER:
        value = suite.fail_under
        if value is None:
            value = find_coverage_settings(workspace).fail_under
        under = f"fail_under {value:g} %" if value is not None else "the project's fail_under"
        reason = f"coverage {percent:.2f} % < {under}"
    return CoverageOutcome((step,), percent, reason)
