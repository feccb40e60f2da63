"""Sharded suites (tasks/sharding.py): the same counts, failures and coverage as
the unsharded run, on a real pytest and coverage.py, for a passing and a
failing commit; shards balanced by recorded durations."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cicd import paths
from cicd.config import SuiteConfig
from cicd.results import JobResult, JobState
from tasks import sharding
from tasks.environments import Environment
from tasks.job import Deadline
from tasks.testing import run_suite

PACKAGE = """def grade(score: int) -> str:
    if score >= 90:
        return "A"
    if score >= 50:
        return "B"
    return "C"


def never_called() -> int:
    return 0
"""

TESTS = {
    "tests/test_a.py": "from grades import grade\n\n\ndef test_a() -> None:\n"
    '    assert grade(95) == "A"\n',
    "tests/test_b.py": "import pytest\nfrom grades import grade\n\n\n"
    "@pytest.mark.parametrize('score', [50, 60, 70])\n"
    "def test_b(score: int) -> None:\n    assert grade(score) == 'B'\n",
    "tests/sub/test_c.py": "from grades import grade\n\n\nclass TestC:\n"
    "    def test_c(self) -> None:\n        assert grade(1) == 'C'\n\n"
    "    def test_skip(self) -> None:\n        import pytest\n        pytest.skip('later')\n",
    "tests/test_d.py": "def test_d() -> None:\n    assert True\n",
}

PYPROJECT = """[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["src"]

[tool.coverage.run]
source = ["src"]
"""


@pytest.fixture
def project() -> Iterator[Path]:
    # Under the workspaces directory: a job's box binds it (cicd/sandbox_step.py).
    root = paths.workspaces() / f"shard-{uuid.uuid4().hex[:8]}"
    (root / "src").mkdir(parents=True)
    (root / "src" / "grades.py").write_text(PACKAGE)
    (root / "pyproject.toml").write_text(PYPROJECT)
    for name, text in TESTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"]):
        subprocess.run(["git", "-C", str(root), *argv], check=True, timeout=60)
    subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com",
         "commit", "-q", "-m", "tests"], check=True, timeout=60,
    )  # fmt: skip
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run(project: Path, env: Environment, parallel: str | int) -> JobResult:
    suite = SuiteConfig.model_validate({"coverage": True, "parallel": parallel})
    reports = paths.runs() / f"shard-{uuid.uuid4().hex[:8]}" / "reports"
    return run_suite(
        "unit", project, env.for_workspace(project), suite, reports, Deadline(suite.timeout)
    )


def test_shards_report_what_the_unsharded_run_reports(
    project: Path, tools_env: Environment
) -> None:
    whole = run(project, tools_env, "off")
    sharded = run(project, tools_env, 2)

    assert whole.state is sharded.state is JobState.PASSED
    assert whole.tests == sharded.tests
    assert whole.tests is not None and (whole.tests.passed, whole.tests.skipped) == (6, 1)
    assert whole.coverage_percent == sharded.coverage_percent
    assert whole.coverage_percent is not None and 0 < whole.coverage_percent < 100
    names = [step.name for step in sharded.steps]
    assert names[:3] == ["pytest --collect-only", "pytest shard 1/2", "pytest shard 2/2"]
    assert names[3:] == ["pytest", "coverage reports"]  # the shards' data combined there
    assert not any(step.name.startswith("pytest shard") for step in whole.steps)


def test_a_failing_commit_fails_sharded_with_the_same_failure(
    project: Path, tools_env: Environment
) -> None:
    (project / "tests" / "sub" / "test_c.py").write_text(
        TESTS["tests/sub/test_c.py"].replace("grade(1) == 'C'", "grade(1) == 'A', 'wrong grade'")
    )
    whole = run(project, tools_env, "off")
    sharded = run(project, tools_env, "auto")

    assert whole.state is sharded.state is JobState.FAILED
    assert whole.tests == sharded.tests
    assert sharded.tests is not None and sharded.tests.failed == 1
    assert [f.name for f in sharded.tests.failures] == ["tests.sub.test_c.TestC::test_c"]
    assert "wrong grade" in sharded.tests.failures[0].message
    assert whole.reason == sharded.reason


def test_a_collection_error_is_reported_as_the_unsharded_run_reports_it(
    project: Path, tools_env: Environment
) -> None:
    (project / "tests" / "test_d.py").write_text("import not_a_module\n")
    whole = run(project, tools_env, "off")
    sharded = run(project, tools_env, 2)

    assert whole.state is sharded.state is JobState.FAILED
    assert whole.tests == sharded.tests
    assert sharded.tests is not None and sharded.tests.collection_errors == 1
    assert not any(step.name.startswith("pytest shard") for step in sharded.steps)


def test_recorded_durations_name_every_file_and_balance_the_next_split(
    project: Path, tools_env: Environment
) -> None:
    # A slow file: the next split puts it alone on its shard.
    (project / "tests" / "test_d.py").write_text(
        "import time\n\n\ndef test_d() -> None:\n    time.sleep(1.0)\n"
    )
    run(project, tools_env, 2)
    root = subprocess.run(
        ["git", "-C", str(project), "rev-list", "--max-parents=0", "HEAD"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    recorded = sharding.load_durations(sharding.durations_path(root, "unit"))
    assert set(recorded) == set(TESTS)
    assert recorded["tests/test_d.py"] == max(recorded.values()) >= 1.0
    files = {name: ["x"] * 3 for name in TESTS}
    assert ["tests/test_d.py"] in sharding.plan(files, recorded, 2)


def test_the_plan_puts_the_longest_files_first_on_the_least_loaded_shard() -> None:
    files = {name: ["t"] for name in "abcde"}
    durations = {"a": 10.0, "b": 6.0, "c": 5.0, "d": 1.0}
    # e has no record: it weighs one test at the mean recorded time per test (5.5 s),
    # so a (10), b (6), e (5.5), c (5), d (1) go to 10 | 6, 11.5 | 15 | 12.5.
    assert sharding.plan(files, durations, 2) == [["a", "c"], ["b", "d", "e"]]
    assert sharding.plan(files, {}, 9) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert sharding.plan({"only": ["t"]}, {}, 4) == [["only"]]


def test_the_junit_key_is_the_one_pytest_writes() -> None:
    assert sharding.junit_key("tests/sub/test_c.py::TestC::test_c") == (
        "tests.sub.test_c.TestC",
        "test_c",
    )
    assert sharding.junit_key("tests/test_b.py::test_b[a/b::c]") == (
        "tests.test_b",
        "test_b[a/b::c]",
    )


@pytest.mark.parametrize(
    ("codes", "expected"),
    [([0, 0], 0), ([0, 1], 1), ([1, 2], 2), ([5, 0], 0), ([5, 5], 5), ([1, 3], 3), ([0, -9], -9)],
)
def test_the_combined_exit_status_is_the_worst_in_pytests_order(
    codes: list[int], expected: int
) -> None:
    assert sharding.combined_returncode(codes) == expected


@pytest.mark.parametrize("value", [0, 65, True, "many", 1.5])
def test_parallel_takes_off_auto_or_a_shard_count(value: object) -> None:
    with pytest.raises(ValueError, match="parallel"):
        SuiteConfig.model_validate({"parallel": value})


def test_yaml_off_is_off() -> None:
    assert SuiteConfig.model_validate({"parallel": False}).parallel == "off"
    assert SuiteConfig.model_validate({"parallel": 3}).parallel == 3
    assert sharding.shard_count("auto", cpus=2) == 2
    assert sharding.shard_count("off") == sharding.shard_count(1) == 1
