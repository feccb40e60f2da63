"""The embedded default target: ``examples/agentkit`` as a real git repository.

``cicd run`` without ``--repo`` and the test suite both use it. The example
directory itself is not a repository (it lives inside ours), so it is copied
into a new repository with one commit on ``main``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cicd import paths
from cicd.git import run_in

SAMPLE_SOURCE = Path(__file__).resolve().parent.parent / "examples" / "agentkit"
AUTHOR = {
    "GIT_AUTHOR_NAME": "cicd-flows",
    "GIT_AUTHOR_EMAIL": "cicd-flows@example.invalid",
    "GIT_COMMITTER_NAME": "cicd-flows",
    "GIT_COMMITTER_EMAIL": "cicd-flows@example.invalid",
}


def git_env() -> dict[str, str]:
    """What the sample's git calls add to cicd.git's safe environment."""
    # A user's global hooks or signing config must not run in our sample repos.
    return {**AUTHOR, "GIT_CONFIG_GLOBAL": os.devnull}


def git(repo: Path, *args: str) -> str:
    """``git -C repo ARGS`` in a repository we made (the sample, test scenarios): its output."""
    return run_in(repo, *args, env=git_env())


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def create_sample_repo(dest: Path, source: Path = SAMPLE_SOURCE) -> Path:
    """A new repository at ``dest`` holding the sample project, one commit on main."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*_cache"))
    git(dest, "init", "--quiet", "--initial-branch=main")
    commit_all(dest, "feat: initial agentkit sample")
    return dest


def default_sample_repo() -> Path:
    """The sample repository under ``$CICD_HOME``, refreshed when the example changes."""
    dest = paths.home() / "sample" / "agentkit"
    stamp = dest / ".git" / "cicd-sample-stamp"
    fingerprint = _fingerprint(SAMPLE_SOURCE)
    if not stamp.is_file() or stamp.read_text() != fingerprint:
        create_sample_repo(dest)
        stamp.write_text(fingerprint)
    return dest


def _fingerprint(source: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(
        p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
