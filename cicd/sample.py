"""The embedded default target: ``examples/agentkit`` as a real git repository.

``cicd run`` without ``--repo`` and the test suite both use it. The example
directory itself is not a repository (it lives inside ours), so it is copied
into a new repository with one commit on ``main``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cicd import command, paths
from cicd.errors import InfrastructureError

SAMPLE_SOURCE = Path(__file__).resolve().parent.parent / "examples" / "agentkit"
AUTHOR = {
    "GIT_AUTHOR_NAME": "cicd-flows",
    "GIT_AUTHOR_EMAIL": "cicd-flows@example.invalid",
    "GIT_COMMITTER_NAME": "cicd-flows",
    "GIT_COMMITTER_EMAIL": "cicd-flows@example.invalid",
}


def git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(AUTHOR)
    # A user's global hooks or signing config must not run in our sample repos.
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    return env


def git(repo: Path, *args: str) -> str:
    result = command.run(["git", "-C", str(repo), *args], env=git_env(), timeout=60)
    if not result.ok:
        raise InfrastructureError(f"git {' '.join(args)} failed in {repo}: {result.tail(5)}")
    return result.output.strip()


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
