"""Test jobs as the project's own tools run: pytest's configuration where pytest
reads it, coverage as coverage.py measures it, outcomes named as pytest names
them (issue 9, items 1, 3 and 5).

Real pytest and coverage.py in a real environment, on projects built in
``tests/layout_repos.py``, each run confined as a job step is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cicd import paths
from cicd.config import SuiteConfig, detect_defaults
from cicd.coverage_config import find_coverage_settings
from cicd.pytest_config import find_pytest_config
from cicd.results import JobResult, JobState
from tasks import job_runner, progress
from tasks.environments import Environment
from tasks.job import Deadline
from tasks.testing import SuiteJob, run_suite
from tests import layout_repos
from tests.layout_repos import BROKEN_TEST, TESTPATHS_FILES, project_with_testpaths, write


@pytest.fixture
def workspace() -> Iterator[Path]:
    # Where the pipeline puts a checkout: its box binds it (cicd/sandbox_step.py).
    path = paths.workspaces() / f"layout-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(workspace: Path, env: Environment, suite: SuiteConfig, name: str = "unit") -> JobResult:
    reports = paths.runs() / f"layout-{workspace.name}" / "reports"
    return run_suite(
        name, workspace, env.for_workspace(workspace), suite, reports, Deadline(suite.timeout)
    )


def direct_coverage(workspace: Path, env: Environment) -> dict[str, Any]:
    """The project's own ``coverage run -m pytest; coverage combine; coverage json``."""
    environ = env.for_workspace(workspace).environ({"COVERAGE_FILE": str(workspace / ".cov")})
    python = str(env.python)
    subprocess.run([python, "-m", "coverage", "run", "-m", "pytest", "-q"], cwd=workspace,
                   env=environ, check=True, capture_output=True, timeout=300)  # fmt: skip
    if any(workspace.glob(".cov.*")):
        subprocess.run([python, "-m", "coverage", "combine", "-q"], cwd=workspace, env=environ,
                       check=True, capture_output=True, timeout=120)  # fmt: skip
    out = workspace / "direct.json"
    report = [python, "-m", "coverage", "json", "-q", "-o", str(out), "--fail-under=0"]
    subprocess.run(report, cwd=workspace, env=environ, check=True, capture_output=True, timeout=120)
    data: dict[str, Any] = json.loads(out.read_text())
    for leftover in [out, *workspace.glob(".cov*")]:
        leftover.unlink()
    return data


# ----------------------------------------------------------------- pure discovery


@pytest.mark.parametrize("config_file", sorted(TESTPATHS_FILES))
def test_testpaths_are_read_where_pytest_reads_them(tmp_path: Path, config_file: str) -> None:
    project_with_testpaths(tmp_path, config_file)
    found = find_pytest_config(tmp_path)
    assert (found.inifile, found.testpaths) == (config_file, ("testing",))


def test_the_first_pytest_configuration_wins_as_pytest_says(tmp_path: Path) -> None:
    # pytest.ini is used even when empty; a pyproject.toml without a pytest table,
    # a tox.ini without [pytest] and a setup.cfg without [tool:pytest] are passed over.
    write(tmp_path, {"tox.ini": "[pytest]\ntestpaths = a\n", "setup.cfg": "[tool:pytest]\n"})
    assert find_pytest_config(tmp_path).testpaths == ("a",)
    write(tmp_path, {"pyproject.toml": '[tool.pytest]\ntestpaths = ["native"]\n'})
    assert find_pytest_config(tmp_path).inifile == "pyproject.toml"
    assert find_pytest_config(tmp_path).testpaths == ("native",)
    write(tmp_path, {"pytest.ini": ""})
    assert find_pytest_config(tmp_path).inifile == "pytest.ini"
    assert find_pytest_config(tmp_path).testpaths == ()


def test_coverage_settings_follow_coverage_py_file_order(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": "[tool.coverage.report]\nfail_under = 90\n"})
    assert find_coverage_settings(tmp_path).fail_under == 90
    write(tmp_path, {"tox.ini": "[coverage:report]\nfail_under = 80\nprecision = 2\n"})
    assert (find_coverage_settings(tmp_path).file, find_coverage_settings(tmp_path).fail_under,
            find_coverage_settings(tmp_path).precision) == ("tox.ini", 80, 2)  # fmt: skip
    write(tmp_path, {"setup.cfg": "[metadata]\nname = x\n"})  # no coverage section: passed over
    assert find_coverage_settings(tmp_path).file == "tox.ini"
    write(tmp_path, {".coveragerc": "[run]\nbranch = true\n"})  # ours: used, no fail_under
    assert (find_coverage_settings(tmp_path).file, find_coverage_settings(tmp_path).fail_under) == (
        ".coveragerc",
        None,
    )


def test_defaults_name_no_path_and_use_the_projects_coverage_config(tmp_path: Path) -> None:
    project_with_testpaths(tmp_path, "tox.ini")
    suite = detect_defaults(tmp_path).tests["unit"]
    assert suite.paths == [] and suite.coverage == ["src/gadget"]
    layout_repos.plugin_project(tmp_path / "plugin")
    assert detect_defaults(tmp_path / "plugin").tests["unit"].coverage is True


# ----------------------------------------------------------------- real runs


@pytest.mark.slow
@pytest.mark.parametrize("config_file", sorted(TESTPATHS_FILES))
def test_a_suite_without_paths_collects_the_projects_testpaths(
    workspace: Path, tools_env: Environment, config_file: str
) -> None:
    project_with_testpaths(workspace, config_file)
    suite = detect_defaults(workspace).tests["unit"]

    result = run(workspace, tools_env, suite)

    # The decoy outside testpaths would have failed; the two tests in testing/ pass.
    assert result.state is JobState.PASSED, (result.reason, result.steps[0].output_tail)
    assert result.tests is not None
    assert (result.tests.passed, result.tests.failed, result.tests.errors) == (2, 0, 0)
    assert "--junitxml" in result.steps[0].command and " testing" not in result.steps[0].command


@pytest.mark.slow
def test_paths_from_cicd_yaml_override_the_projects_testpaths(
    workspace: Path, tools_env: Environment
) -> None:
    project_with_testpaths(workspace, "tox.ini")
    result = run(workspace, tools_env, SuiteConfig(paths=["examples"]))
    assert result.state is JobState.FAILED
    assert result.tests is not None and result.tests.failed == 1
    assert result.reason == "1 failed"


@pytest.mark.slow
def test_coverage_counts_the_import_time_lines_of_a_package_a_plugin_imports(
    workspace: Path, tools_env: Environment
) -> None:
    layout_repos.plugin_project(workspace, parallel=True)
    suite = detect_defaults(workspace).tests["unit"]

    events: list[progress.ProgressEvent] = []
    with progress.listening(events.append):
        result = run(workspace, tools_env, suite)

    assert result.state is JobState.PASSED, (result.reason, [s.output_tail for s in result.steps])
    direct = direct_coverage(workspace, tools_env)
    # The project's own figure, with its `source` and parallel data combined.
    assert result.coverage_percent == pytest.approx(direct["totals"]["percent_covered"])
    assert list(direct["files"]) == ["src/gadget/__init__.py"]
    # Only `unused`'s two lines are missed: the import-time ones all count.
    assert direct["totals"]["missing_lines"] == 2
    # Combine, JSON and the terminal report in the test process (tasks/coverage_reports.py
    # --run), reported as a step of their own; the parallel data files were combined.
    assert [s.name for s in result.steps] == ["pytest", "coverage reports"]
    assert "coverage_reports.py" in result.steps[0].command and " --run " in result.steps[0].command
    assert result.steps[1].command.startswith("(in the test process)")
    assert not list(
        (paths.runs() / f"layout-{workspace.name}" / "reports").glob(".coverage-unit.*")
    )
    # The log keeps the table the project's own `coverage report` prints, after
    # the tests' output, which stays the test command's own.
    assert "TOTAL" in result.steps[1].output_tail
    assert "TOTAL" not in result.steps[0].output_tail
    # The live view shows the command a user knows, not the wrapper.
    started = [e.command for e in events if isinstance(e, progress.StepStarted)]
    assert started[0].startswith(f"{tools_env.python} -m coverage run -m pytest"), started
    assert started[0].endswith("(coverage reports in the same process)"), started


# Run by pytest at its end, in the interpreter the in-process reports then use.
UNFIT_CONFTEST = """\
import coverage


def _broken(*args, **kwargs):
    raise RuntimeError("left broken by the suite")


def pytest_unconfigure(config):
    coverage.Coverage.json_report = _broken
"""


@pytest.mark.slow
def test_reports_run_in_a_process_of_their_own_when_the_tests_leave_theirs_unfit(
    workspace: Path, tools_env: Environment
) -> None:
    layout_repos.plugin_project(workspace)
    (workspace / "tests" / "conftest.py").write_text(UNFIT_CONFTEST)
    suite = detect_defaults(workspace).tests["unit"]

    result = run(workspace, tools_env, suite)

    assert result.state is JobState.PASSED, (result.reason, [s.output_tail for s in result.steps])
    assert result.coverage_percent == pytest.approx(
        direct_coverage(workspace, tools_env)["totals"]["percent_covered"]
    )
    assert [s.name for s in result.steps] == ["pytest", "coverage reports"]
    assert "--data-file=" in result.steps[1].command  # the script itself, not the record
    assert "TOTAL" in result.steps[1].output_tail


@pytest.mark.slow
def test_a_breached_fail_under_is_its_own_failure_with_no_failed_test(
    workspace: Path, tools_env: Environment
) -> None:
    layout_repos.plugin_project(workspace, coverage_report="fail_under = 100\n")
    suite = detect_defaults(workspace).tests["unit"]

    result = run(workspace, tools_env, suite)

    assert result.state is JobState.FAILED
    assert result.tests is not None and (result.tests.passed, result.tests.failed) == (2, 0)
    assert result.coverage_percent is not None
    assert result.reason == f"coverage {result.coverage_percent:.2f} % < fail_under 100 %"
    data = result.to_json()
    assert (data["failed"], data["errors"]) == (0, 0)


@pytest.mark.slow
def test_fail_under_from_cicd_yaml_and_sources_from_cicd_yaml(
    workspace: Path, tools_env: Environment
) -> None:
    layout_repos.plugin_project(workspace)
    met = run(workspace, tools_env, SuiteConfig(coverage=["src/gadget"], fail_under=50))
    assert met.state is JobState.PASSED, met.reason
    assert "--source=src/gadget" in met.steps[0].command

    missed = run(workspace, tools_env, SuiteConfig(coverage=True, fail_under=99.5))
    assert missed.state is JobState.FAILED
    assert missed.reason.endswith("< fail_under 99.5 %")


@pytest.mark.slow
def test_a_collection_error_is_an_error_not_a_failed_test(
    workspace: Path, tools_env: Environment
) -> None:
    project_with_testpaths(workspace, "tox.ini")
    write(workspace, {"testing/test_broken.py": BROKEN_TEST})

    result = run(workspace, tools_env, detect_defaults(workspace).tests["unit"])

    assert result.state is JobState.FAILED
    assert result.tests is not None
    assert (result.tests.failed, result.tests.errors, result.tests.collection_errors) == (0, 1, 1)
    assert result.reason.startswith("1 collection error: pytest stopped at collection")
    assert "testing.test_broken" in result.reason
    data = result.to_json()
    assert (data["failed"], data["errors"], data["collection_errors"]) == (0, 1, 1)


@pytest.mark.slow
def test_an_empty_suite_fails_unless_it_allows_it(workspace: Path, tools_env: Environment) -> None:
    project_with_testpaths(workspace, "tox.ini", tests="# no tests yet\n")
    suite = detect_defaults(workspace).tests["unit"]

    empty = run(workspace, tools_env, suite)
    allowed = run(workspace, tools_env, suite.model_copy(update={"allow_empty": True}))

    assert empty.state is JobState.FAILED
    assert empty.reason == "collected no tests from testpaths testing (tox.ini)"
    assert allowed.state is JobState.PASSED
    assert "allow_empty" in allowed.reason


@pytest.mark.slow
def test_a_usage_error_is_named(workspace: Path, tools_env: Environment) -> None:
    project_with_testpaths(workspace, "tox.ini")
    result = run(workspace, tools_env, SuiteConfig(args=["--no-such-option"]))
    assert result.state is JobState.FAILED
    assert result.reason.startswith("pytest usage error (exit 4): ERROR: usage:")


# ----------------------------------------------------------------- through the cache


def run_in_flow(job: SuiteJob, workspace: Path) -> JobResult:
    from prefect import flow

    from cicd.runs import pipeline_run

    @flow(name="suite-discovery-test")
    def one_job(job: Any) -> JobResult:
        with pipeline_run("suite-discovery-test") as run:
            return job_runner.run_job(job, run, workspace)

    return one_job(job)


FAILING_LAYOUTS = {
    "fail_under": lambda root: layout_repos.plugin_project(root, "fail_under = 100\n"),
    "collection error": lambda root: write(
        project_with_testpaths(root, "tox.ini"), {"testing/test_broken.py": BROKEN_TEST}
    ),
    "no tests": lambda root: project_with_testpaths(root, "tox.ini", tests="# none yet\n"),
}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("layout", sorted(FAILING_LAYOUTS))
def test_a_failing_verdict_is_never_served_from_the_cache_nor_skipped(
    workspace: Path, tools_env: Environment, layout: str
) -> None:
    FAILING_LAYOUTS[layout](workspace)
    suite = detect_defaults(workspace).tests["unit"]
    job = SuiteJob("unit", suite, tools_env.for_workspace(workspace), source=uuid.uuid4().hex)

    results = [run_in_flow(job, workspace) for _ in range(2)]

    assert [r.state for r in results] == [JobState.FAILED, JobState.FAILED]
    assert results[0].reason == results[1].reason != ""
    assert "cache" not in results[1].reason
    # A docs-only change on this commit would run the job again, not skip it.
    assert not job_runner.passed_before(job)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_an_allowed_empty_suite_passes_then_is_cached_with_its_original_duration(
    workspace: Path, tools_env: Environment
) -> None:
    project_with_testpaths(workspace, "tox.ini", tests="# none yet\n")
    suite = detect_defaults(workspace).tests["unit"].model_copy(update={"allow_empty": True})
    job = SuiteJob("unit", suite, tools_env.for_workspace(workspace), source=uuid.uuid4().hex)

    first = run_in_flow(job, workspace)
    second = run_in_flow(job, workspace)

    assert first.state is JobState.PASSED and second.state is JobState.CACHED
    assert job_runner.passed_before(job)
    data = second.to_json()
    assert data["cached"] is True
    assert data["original_duration"] == data["duration"] == round(first.duration, 3) > 0


EXIT_LAYOUTS = {
    # A plugin (here the project's conftest) that raises inside pytest: exit 3.
    "internal error": (
        {"conftest.py": "def pytest_collection_modifyitems(items):\n    raise RuntimeError()\n"},
        "pytest internal error (exit 3): INTERNALERROR>",
    ),
    # pytest.exit() in a test stops the session: exit 2, no collection error.
    "interrupted": (
        {"testing/test_stop.py": "import pytest\n\n\ndef test_stop():\n    pytest.exit('stop')\n"},
        "pytest was interrupted (exit 2): ",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(EXIT_LAYOUTS))
def test_pytest_exit_codes_are_named(workspace: Path, tools_env: Environment, layout: str) -> None:
    files, reason = EXIT_LAYOUTS[layout]
    write(project_with_testpaths(workspace, "tox.ini"), files)

    result = run(workspace, tools_env, detect_defaults(workspace).tests["unit"])

    assert result.state is JobState.FAILED
    assert result.reason.startswith(reason), result.reason
    assert result.tests is None or result.tests.failed == 0
