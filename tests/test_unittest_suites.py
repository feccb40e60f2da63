"""A plain unittest suite runs as the project's CI runs it, ``python -m unittest``,
not under pytest (issue 15 item 4: pytest's start-up and collection cost more
than such a suite), with the same counts, names and coverage.

Detection is pure (``cicd/unittest_detection.py``); the runs are real: the
project's interpreter, coverage.py, the job step's box.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cicd import paths
from cicd.config import SuiteConfig, detect_defaults, parse_config
from cicd.errors import ConfigError
from cicd.results import JobResult, JobState
from tasks.environments import Environment
from tasks.job import Deadline
from tasks.testing import UNITTEST_RUNNER, pytest_argv, run_suite
from tests.layout_repos import write

PYPROJECT = """\
[project]
name = "calc"
version = "0"

[tool.coverage.run]
branch = true
source = ["calc"]
"""
CALC = """\
def add(a, b):
    return a + b


def sign(x):
    if x < 0:
        return -1
    return 1
"""
PASSING = """\
import unittest

from calc import add, sign


class CalcTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 2), 4)

    def test_sign(self):
        self.assertEqual((sign(-3), sign(3)), (-1, 1))
"""
FAILING = """\
import unittest

from calc import add, sign


class CalcTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 2), 5)

    def test_sign(self):
        self.assertEqual((sign(-3), sign(3)), (-1, 1))

    def test_each(self):
        for n in (1, 2):
            with self.subTest(n=n):
                self.assertEqual(add(n, 0), 1)

    @unittest.skip("not today")
    def test_later(self):
        pass
"""
EXTRA_WITH_PYTEST = """
[project.optional-dependencies]
test = ["pytest>=8"]
"""
BROKEN_IMPORT = "import module_that_does_not_exist\n"


def unittest_project(root: Path, test_module: str = PASSING) -> Path:
    write(
        root,
        {
            "pyproject.toml": PYPROJECT,
            "src/calc/__init__.py": CALC,
            "tests/__init__.py": "",
            "tests/test_calc.py": test_module,
        },
    )
    return root


# ----------------------------------------------------------------- detection


def test_a_plain_unittest_suite_runs_unittest(tmp_path: Path) -> None:
    suite = detect_defaults(unittest_project(tmp_path)).tests["unit"]

    assert suite.runner == "unittest"
    assert suite.coverage is True


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"pytest.ini": "[pytest]\n"}, "pytest is configured"),
        ({"pyproject.toml": PYPROJECT + "[tool.pytest.ini_options]\n"}, "pytest is configured"),
        ({"pyproject.toml": PYPROJECT + EXTRA_WITH_PYTEST}, "an extra requires pytest"),
        ({"tests/conftest.py": ""}, "a conftest.py"),
        ({"tests/test_more.py": "import pytest\n"}, "a test module imports pytest"),
        ({"tests/test_more.py": "from _pytest import fixtures\n"}, "imports pytest's internals"),
        ({"tests/test_more.py": "def test_plain():\n    pass\n"}, "a test function"),
        ({"tests/calc_test.py": "import unittest\n"}, "a file discovery does not match"),
        ({"tests/sub/test_deep.py": "import unittest\n"}, "a directory that is no package"),
        ({"tests/test_calc.py": "import unittest\n"}, "no test class at all"),
    ],
)
def test_a_suite_pytest_would_see_differently_stays_on_pytest(
    tmp_path: Path, files: dict[str, str], why: str
) -> None:
    unittest_project(tmp_path)
    write(tmp_path, files)

    assert detect_defaults(tmp_path).tests["unit"].runner == "pytest", why


def test_the_unittest_runner_takes_no_pytest_options() -> None:
    for option in ("markers: slow", "args: [-x]", "parallel: 2"):
        text = f"version: 1\ntests:\n  unit:\n    runner: unittest\n    {option}\n"
        with pytest.raises(ConfigError, match=r"runner 'unittest' takes no") as error:
            parse_config(text)
        assert option.split(":")[0] in str(error.value)
    with pytest.raises(ConfigError, match=r"tests.unit.runner"):
        parse_config("version: 1\ntests:\n  unit:\n    runner: nose\n")


def test_the_command_is_the_runner_under_coverage_never_pytest(tmp_path: Path) -> None:
    junit = tmp_path / "reports" / "junit-unit.xml"
    suite = SuiteConfig(runner="unittest", coverage=["src/calc"], paths=["tests"])

    measured = pytest_argv(Path("/env/bin/python"), suite, junit, coverage=True)
    bare = pytest_argv(Path("/env/bin/python"), suite, junit, coverage=False)

    runner = str(junit.parent / UNITTEST_RUNNER.name)
    assert measured == ["/env/bin/python", "-m", "coverage", "run", "--source=src/calc",
                        runner, "tests", f"--junitxml={junit}"]  # fmt: skip
    assert bare == ["/env/bin/python", runner, "tests", f"--junitxml={junit}"]
    assert "pytest" not in measured + bare


# ----------------------------------------------------------------- real runs


@pytest.fixture
def workspace() -> Iterator[Path]:
    path = paths.workspaces() / f"unittest-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(workspace: Path, env: Environment) -> JobResult:
    suite = detect_defaults(workspace).tests["unit"]
    assert suite.runner == "unittest"
    reports = paths.runs() / f"unittest-{workspace.name}" / "reports"
    try:
        return run_suite(
            "unit", workspace, env.for_workspace(workspace), suite, reports, Deadline(300)
        )
    finally:
        shutil.rmtree(reports.parent, ignore_errors=True)


def unittest_ran(workspace: Path, env: Environment) -> int:
    """How many tests the project's own ``python -m unittest`` runs."""
    done = subprocess.run(
        [str(env.python), "-m", "unittest"], cwd=workspace, capture_output=True, text=True,
        env=env.for_workspace(workspace).environ(), timeout=120,
    )  # fmt: skip
    found = re.search(r"^Ran (\d+) tests?", done.stderr, re.M)
    assert found, done.stderr
    return int(found.group(1))


@pytest.mark.slow
def test_a_passing_unittest_suite_passes_with_its_coverage(
    workspace: Path, tools_env: Environment
) -> None:
    unittest_project(workspace)

    result = run(workspace, tools_env)

    assert result.state is JobState.PASSED, result.reason
    assert result.steps[0].name == "unittest"
    assert "-m pytest" not in result.steps[0].command
    assert result.tests is not None
    assert (result.tests.passed, result.tests.failed, result.tests.errors) == (2, 0, 0)
    assert result.tests.passed == unittest_ran(workspace, tools_env)
    assert result.coverage_percent == 100.0


@pytest.mark.slow
def test_a_failing_unittest_suite_names_its_failures_and_import_errors(
    workspace: Path, tools_env: Environment
) -> None:
    unittest_project(workspace, FAILING)
    write(workspace, {"tests/test_broken.py": BROKEN_IMPORT})

    result = run(workspace, tools_env)

    assert result.state is JobState.FAILED
    tests = result.tests
    assert tests is not None
    # test_sign passes; test_add and one sub-test of test_each fail; test_later is
    # skipped; tests.test_broken cannot be imported (an error, not a failed test).
    assert (tests.passed, tests.failed, tests.skipped) == (1, 2, 1)
    assert (tests.errors, tests.collection_errors) == (1, 1)
    names = {f.name for f in tests.failures}
    assert "tests.test_calc.CalcTest::test_add" in names
    assert "tests.test_calc.CalcTest::test_each (n=2)" in names
    assert "tests.test_broken" in names
    assert result.reason.startswith("2 failed, 1 collection error"), result.reason
