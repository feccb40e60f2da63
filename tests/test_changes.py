"""Instant reruns and change detection: cache keys, ignored paths, and the
PR flow serving unchanged jobs from the Prefect cache or skipping them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cicd.changes import is_ignored, only_ignored, source_fingerprint
from cicd.sample import git
from tests.sample_repos import commit_on_branch

IGNORE = ["docs/**", "*.md"]


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("docs/usage.md", True),
        ("docs/api/index.rst", True),
        ("README.md", True),
        ("src/agentkit/README.md", True),
        ("src/agentkit/agent.py", False),
        ("documentation.txt", False),
        ("cicd.yaml", False),
        ("pyproject.toml", False),
        ("requirements-dev.txt", False),
    ],
)
def test_ignore_patterns(path: str, ignored: bool) -> None:
    assert is_ignored(path, IGNORE) is ignored


def test_config_and_dependencies_are_never_ignored() -> None:
    assert not is_ignored("cicd.yaml", ["*"])
    assert not is_ignored("pyproject.toml", ["**"])
    assert only_ignored(["docs/a.md", "README.md"], IGNORE)
    assert not only_ignored(["docs/a.md", "src/x.py"], IGNORE)
    assert not only_ignored([], IGNORE)


def test_fingerprint_follows_code_not_docs(sample_repos: dict[str, Path]) -> None:
    repo = sample_repos["agentkit"]
    fingerprints = {}
    for branch in ("main", "docs-only", "lint-error"):
        git(repo, "checkout", "--quiet", branch)
        fingerprints[branch] = (source_fingerprint(repo, IGNORE), source_fingerprint(repo, []))
    git(repo, "checkout", "--quiet", "main")
    assert fingerprints["docs-only"][0] == fingerprints["main"][0]
    # Without ignore_paths the docs are inputs like any other file.
    assert fingerprints["docs-only"][1] != fingerprints["main"][1]
    assert fingerprints["lint-error"][0] != fingerprints["main"][0]


@pytest.mark.usefixtures("prefect_server")
def test_rerun_is_cached_and_docs_only_change_skips(sample_repos: dict[str, Path]) -> None:
    from flows.pr_validation import pr_validation

    repo = sample_repos["agentkit"]
    with commit_on_branch(repo, "rerun", "feat: a commit of its own, so no earlier run is cached"):
        (repo / "src" / "agentkit" / "rerun.py").write_text('"""A new module."""\n\nVALUE = 1\n')

    cold = pr_validation(repo=str(repo), ref="rerun")
    assert {job["state"] for job in cold["jobs"]} == {"passed"}

    rerun = pr_validation(repo=str(repo), ref="rerun")
    assert {job["name"]: job["state"] for job in rerun["jobs"]} == {
        "quality": "cached",
        "unit": "cached",
        "framework": "cached",
    }
    assert rerun["jobs"][1]["passed"] == cold["jobs"][1]["passed"]

    with commit_on_branch(repo, "rerun-docs", "docs: rewrite usage", base="rerun"):
        (repo / "docs" / "usage.md").write_text("# Usage\n\nRewritten.\n")

    docs = pr_validation(repo=str(repo), ref="rerun-docs", base="rerun")
    assert {job["state"] for job in docs["jobs"]} == {"skipped"}
    assert all("docs/usage.md" in job["reason"] for job in docs["jobs"])
