"""A checkout started before its flow run exists (cicd/git/ahead.py, issue 15):
the run's checkout task takes it, or its error, as if it had made it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cicd.errors import BadInput
from cicd.git import ahead, remove_workspace
from cicd.sample import git
from tests.sample_repos import FAILING_TEST, commit_on_branch


def test_the_task_takes_the_checkout_made_ahead_of_the_same_repo_and_ref(
    sample_repos: dict[str, Path],
) -> None:
    repo = sample_repos["agentkit"]
    with commit_on_branch(repo, "ahead-failing", "a failing test") as tree:
        (tree / "tests" / "unit" / "test_ahead_failing.py").write_text(FAILING_TEST)
    expected = git(repo, "rev-parse", "ahead-failing").strip()
    ahead.start(str(repo), "ahead-failing")
    assert ahead.take(str(repo), "main") is None  # another ref: checked out in the task
    taken = ahead.take(str(repo), "ahead-failing")
    assert taken is not None and taken.commit == expected
    # The failing commit's own tree, not main's: its verdict is this commit's.
    assert (taken.path / "tests" / "unit" / "test_ahead_failing.py").read_text() == FAILING_TEST
    assert ahead.take(str(repo), "ahead-failing") is None  # taken once: a retry checks out anew
    remove_workspace(taken.path)


def test_an_error_of_the_checkout_ahead_is_raised_by_take(sample_repos: dict[str, Path]) -> None:
    repo = sample_repos["agentkit"]
    ahead.start(str(repo), "no-such-branch")
    with pytest.raises(BadInput, match="unknown ref"):
        ahead.take(str(repo), "no-such-branch")


def test_a_checkout_no_task_took_is_removed(sample_repos: dict[str, Path]) -> None:
    repo = sample_repos["agentkit"]
    ahead.start(str(repo), "main")
    made = ahead._pending[(str(repo), "main")].result()  # the run failed before its checkout
    assert made.path.is_dir()
    ahead.discard()
    assert not made.path.exists()
    assert ahead.take(str(repo), "main") is None
