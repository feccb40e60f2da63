"""A verdict that cannot lie: reruns of a failing commit fail again, and a
commit is never served the cached result of another commit.

Each test runs the CLI as a user does, twice on the same inputs: the second run
goes through the cache lookup with the same key as the first.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cicd.sample import commit_all, git
from tests.conftest import BIN
from tests.sample_repos import commit_on_branch

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_json(repo: Path, ref: str, *more: str) -> tuple[int, dict[str, Any]]:
    argv = [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", ref]
    result = subprocess.run(
        [*argv, "--json", *more],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.stdout, result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout)


def states(report: dict[str, Any]) -> dict[str, str]:
    return {job["name"]: job["state"] for job in report["jobs"]}


def unit_suite_only(repo: Path) -> None:
    """PR validation without the Neo4j suite: the verdicts here are about the cache."""
    config = repo / "cicd.yaml"
    config.write_text(
        config.read_text().replace("suites: [unit, framework]", "suites: [unit]", 1)
    )


def test_a_quality_failure_fails_on_every_rerun(sample_repos: dict[str, Path]) -> None:
    repo = sample_repos["agentkit"]
    with commit_on_branch(repo, "red-quality", "feat: an unused import"):
        unit_suite_only(repo)
        (repo / "src" / "agentkit" / "red.py").write_text('"""Red."""\n\nimport os\n')

    for attempt in (1, 2):
        code, report = run_json(repo, "red-quality")
        assert code == 1, f"run {attempt}: {report}"
        assert report["state"] == "failed"
        assert states(report)["quality"] == "failed", f"run {attempt}"
        # The second run serves the passing unit job from the cache, never the failing one.
        assert states(report)["unit"] == ("passed" if attempt == 1 else "cached")


def test_a_test_failure_fails_on_every_rerun(sample_repos: dict[str, Path]) -> None:
    repo = sample_repos["agentkit"]
    with commit_on_branch(repo, "red-unit", "test: a failing test"):
        unit_suite_only(repo)
        (repo / "tests" / "unit" / "test_red.py").write_text(
            "def test_red() -> None:\n    assert sum([1, 1]) == 3, \"red on purpose\"\n"
        )

    reports = [run_json(repo, "red-unit") for _ in range(2)]

    for code, report in reports:
        assert code == 1
        unit = next(job for job in report["jobs"] if job["name"] == "unit")
        assert unit["state"] == "failed"
        assert unit["failed"] == 1
    # The passing jobs of the first run were served from the cache, the failing one was not.
    assert states(reports[1][1])["quality"] == "cached"


def _large_repo(root: Path, files: int) -> Path:
    """A project whose only test reads the file that sorts first in the index."""
    repo = root / "large"
    (repo / "filler").mkdir(parents=True)
    (repo / "AAA_value.py").write_text("VALUE = 1\n")
    (repo / "test_value.py").write_text(
        "from AAA_value import VALUE\n\n\ndef test_value() -> None:\n    assert VALUE == 1\n"
    )
    (repo / "pyproject.toml").write_text('[project]\nname = "large"\nversion = "0"\n')
    (repo / "cicd.yaml").write_text("version: 1\ntests:\n  unit: {paths: [test_value.py]}\n")
    for index in range(files):
        (repo / "filler" / f"file-{index:05d}.txt").write_text(f"{index}\n")
    git(repo, "init", "--quiet", "-b", "main")
    commit_all(repo, "a large project")
    return repo


def test_a_change_to_the_first_file_of_a_large_repo_is_not_served_its_parents_result(
    tmp_path: Path,
) -> None:
    repo = _large_repo(tmp_path, 3000)
    code, report = run_json(repo, "main")
    assert code == 0 and states(report) == {"unit": "passed"}

    git(repo, "checkout", "--quiet", "-b", "broken")
    (repo / "AAA_value.py").write_text("VALUE = 2\n")
    commit_all(repo, "break the first file")
    code, report = run_json(repo, "broken")

    assert code == 1
    assert states(report) == {"unit": "failed"}


def test_a_docs_only_change_on_a_failing_commit_still_fails(sample_repos: dict[str, Path]) -> None:
    repo = sample_repos["agentkit"]
    with commit_on_branch(repo, "red-base", "test: a failing test"):
        unit_suite_only(repo)
        (repo / "tests" / "unit" / "test_red_base.py").write_text(
            "def test_red_base() -> None:\n    assert sum([2, 2]) == 5\n"
        )
    with commit_on_branch(repo, "red-docs", "docs: more words", base="red-base"):
        usage = repo / "docs" / "usage.md"
        usage.write_text(usage.read_text() + "\nMore words.\n")

    first, _ = run_json(repo, "red-base")
    code, report = run_json(repo, "red-docs", "--base", "red-base")

    assert first == 1
    # Only ignored paths changed, but the jobs never passed on these inputs: they run.
    assert code == 1
    assert states(report)["unit"] == "failed"
