"""Check out ``repo@ref`` into an isolated workspace.

A bare mirror per repository address is kept under ``$CICD_HOME/mirrors`` and
updated on every run; each run clones it (``--shared``, so no objects are
copied) into a fresh workspace. The user's working tree is only ever read by
``git clone``/``git fetch``, never written: uncommitted changes stay theirs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from cicd import command, paths
from cicd.errors import BadInput, InfrastructureError
from cicd.locking import file_lock

GIT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Checkout:
    repo: str
    ref: str
    commit: str
    path: Path
    mirror: Path


def _git(
    *args: str | Path, cwd: Path | None = None, timeout: float = GIT_TIMEOUT
) -> command.CommandResult:
    env = dict(os.environ)
    # Never ask for credentials on a terminal: a worker has none.
    env["GIT_TERMINAL_PROMPT"] = "0"
    return command.run(["git", *map(str, args)], cwd=cwd, env=env, timeout=timeout)


def is_remote(repo: str) -> bool:
    return "://" in repo or (":" in repo and "@" in repo.split(":", 1)[0])


def normalize_repo(repo: str) -> str:
    """An absolute path for local repositories; URLs as given."""
    if is_remote(repo):
        return repo
    path = Path(repo).expanduser().resolve()
    if not path.exists():
        raise BadInput(f"repository {repo!r} does not exist")
    probe = _git("-C", path, "rev-parse", "--git-dir")
    if not probe.ok:
        raise BadInput(f"{repo!r} is not a git repository")
    return str(path)


def mirror_path(repo: str) -> Path:
    digest = hashlib.sha256(repo.encode()).hexdigest()[:16]
    name = Path(repo.rstrip("/")).name.removesuffix(".git") or "repo"
    return paths.mirrors() / f"{name}-{digest}"


def update_mirror(repo: str) -> Path:
    """Create or refresh the bare mirror of ``repo``; returns its path."""
    mirror = mirror_path(repo)
    with file_lock(mirror.with_name(mirror.name + ".lock")):
        if not (mirror / "HEAD").is_file():
            shutil.rmtree(mirror, ignore_errors=True)
            result = _git("clone", "--mirror", "--quiet", repo, mirror)
            if not result.ok:
                shutil.rmtree(mirror, ignore_errors=True)
                raise _fetch_error(repo, result)
        else:
            result = _git("-C", mirror, "fetch", "--prune", "--tags", "--force", "origin")
            if not result.ok:
                raise _fetch_error(repo, result)
    return mirror


def _fetch_error(repo: str, result: command.CommandResult) -> Exception:
    text = result.tail(5)
    if not is_remote(repo) or "not found" in text.lower() or "does not appear" in text:
        return BadInput(f"cannot read repository {repo!r}: {text}")
    # Network and server trouble: worth a retry.
    return InfrastructureError(f"git fetch of {repo!r} failed: {text}")


def resolve_ref(mirror: Path, ref: str) -> str:
    """The commit SHA that ``ref`` (branch, tag, SHA, HEAD~1, ...) names in the mirror."""
    if ref.startswith("-"):
        raise BadInput(f"unknown ref {ref!r}")
    result = _git(
        "-C", mirror, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"
    )
    if not result.ok:
        raise BadInput(f"unknown ref {ref!r}")
    return result.output.strip()


def checkout(repo: str, ref: str) -> Checkout:
    """Fetch ``repo`` and check ``ref`` out into a new workspace."""
    repo = normalize_repo(repo)
    mirror = update_mirror(repo)
    commit = resolve_ref(mirror, ref)
    dest = paths.workspaces() / f"{commit[:12]}-{uuid.uuid4().hex[:8]}"
    result = _git("clone", "--quiet", "--shared", "--no-checkout", mirror, dest)
    if result.ok:
        result = _git("-C", dest, "checkout", "--quiet", "--detach", commit)
    if not result.ok:
        shutil.rmtree(dest, ignore_errors=True)
        raise InfrastructureError(f"checkout of {commit} failed: {result.tail(5)}")
    return Checkout(repo=repo, ref=ref, commit=commit, path=dest, mirror=mirror)


def remove_workspace(path: Path) -> None:
    if path.is_relative_to(paths.workspaces()):
        shutil.rmtree(path, ignore_errors=True)
        # What environments.install_project put beside it, one per Python version.
        for site in path.parent.glob(f"{path.name}.site-py*"):
            shutil.rmtree(site, ignore_errors=True)


def changed_files(mirror: Path, base: str, commit: str) -> list[str]:
    """Paths that differ between ``base`` and ``commit`` (for change detection)."""
    base_sha = resolve_ref(mirror, base)
    result = _git("-C", mirror, "diff", "--name-only", "-z", base_sha, commit)
    if not result.ok:
        raise InfrastructureError(f"git diff {base_sha}..{commit} failed: {result.tail(5)}")
    return [name for name in result.output.split("\0") if name]


def tracked_entries(workspace: Path) -> list[str]:
    """Every entry of ``git ls-files -s`` (``mode oid stage\tpath``), sorted.

    Read whole, not through ``command.run``, which keeps only the tail of a
    command's output: a listing of a few hundred files would lose its first
    entries, and a change to them would be served its parent's cached result.
    """
    try:
        result = subprocess.run(
            ["git", "-C", str(workspace), "ls-files", "-s", "-z"],
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"git ls-files in {workspace} timed out") from None
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace")[-2000:]
        raise InfrastructureError(f"git ls-files failed: {stderr}")
    listing = result.stdout.decode(errors="surrogateescape")
    return sorted(entry for entry in listing.split("\0") if entry)


def commit_timestamp(repo: Path, commit: str) -> int:
    """The committer time of ``commit`` (seconds since the epoch): a reproducible
    build's SOURCE_DATE_EPOCH (https://reproducible-builds.org/docs/source-date-epoch/)."""
    result = _git("-C", repo, "log", "-1", "--format=%ct", "--end-of-options", commit, "--")
    if not result.ok:
        raise InfrastructureError(f"git log of {commit} failed: {result.tail(5)}")
    return int(result.output.strip() or 0)
