"""Every git call of cicd-flows, and the checks that keep user input data.

Like pre-commit's ``git.py`` (https://github.com/pre-commit/pre-commit/blob/main/pre_commit/git.py),
no other module runs git: one private runner gives every call the same safe
environment, and every value that comes from a user, a webhook or a repository
is checked here and passed after ``--`` (or ``--end-of-options``), so it can
never be read as an option. ``git clone --mirror --upload-pack=CMD@x:y`` would
run CMD; ``ext::sh -c ...`` would too (https://git-scm.com/docs/git-remote-ext).

Checkouts: a bare mirror per repository address is kept under
``$CICD_HOME/mirrors`` and updated on every run; each run clones it
(``--shared``, so no objects are copied) into a fresh workspace. The user's
working tree is only ever read by ``git clone``/``git fetch``, never written.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cicd import ownership, paths
from cicd.errors import BadInput, InfrastructureError
from cicd.git.inputs import (
    check_commit_sha,
    check_ref,
    check_repo_address,
    is_remote,
    shown,
    validate_repo_address,
)
from cicd.git.mirror_health import looks_corrupt, pack_damage
from cicd.git.runner import GIT_TIMEOUT, GitResult
from cicd.git.runner import run_git as _run
from cicd.locking import file_lock

__all__ = [
    "Checkout",
    "GitResult",
    "add_worktree",
    "changed_files",
    "check_commit_sha",
    "check_ref",
    "check_repo_address",
    "checkout",
    "clone_workspace",
    "commit_timestamp",
    "is_remote",
    "is_shallow",
    "last_commit_changing",
    "log",
    "ls_remote",
    "mirror_path",
    "nearest_tag",
    "normalize_repo",
    "remove_workspace",
    "remove_worktree",
    "resolve_commit",
    "resolve_ref",
    "run_in",
    "shown",
    "tag_commit",
    "tracked_entries",
    "unshallow",
    "update_mirror",
    "validate_repo_address",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkout:
    repo: str
    ref: str
    commit: str
    path: Path
    mirror: Path
    # Why the mirror was rebuilt for this checkout ("" when it was reused).
    healed: str = ""


def run_in(
    repo: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> str:
    """Run ``git -C repo ARGS`` with our own arguments (never user input); its stdout.

    For repositories cicd-flows creates itself (the sample project, test scenarios).
    """
    result = _run("-C", repo, *args, env=env, timeout=timeout)
    if not result.ok:
        raise InfrastructureError(f"git {' '.join(args)} failed in {repo}: {result.tail()}")
    return result.output.strip()


# --- checkouts -------------------------------------------------------------------------


def normalize_repo(repo: str) -> str:
    """An absolute path for local repositories; URLs as given. BadInput when invalid."""
    repo = validate_repo_address(repo)
    if is_remote(repo):
        return repo
    probe = _run("-C", repo, "rev-parse", "--git-dir", timeout=60)
    if not probe.ok:
        raise BadInput(f"{shown(repo)} is not a git repository")
    return repo


def mirror_path(repo: str) -> Path:
    digest = hashlib.sha256(repo.encode()).hexdigest()[:16]
    name = Path(repo.rstrip("/")).name.removesuffix(".git") or "repo"
    return paths.mirrors() / f"{name}-{digest}"


def update_mirror(repo: str) -> Path:
    """Create or refresh the bare mirror of ``repo``; returns its path."""
    return _update_mirror(repo)[0]


def _update_mirror(repo: str, damage: str | None = None) -> tuple[Path, str]:
    """The mirror, and why it was rebuilt ("" when it was not).

    A mirror git cannot read (``cicd.git.mirror_health``) is deleted and cloned
    again, once: ``damage`` names a fault a caller saw; the packs are checked
    before every fetch, and a failed fetch that reads as damage rebuilds too.
    """
    repo = check_repo_address(repo)
    mirror = mirror_path(repo)
    with file_lock(mirror.with_name(mirror.name + ".lock")):
        if (mirror / "HEAD").is_file() and damage is None:
            damage = pack_damage(mirror)
            if damage is None:
                result = _run("-C", mirror, "fetch", "--prune", "--tags", "--force", "origin")
                if result.ok:
                    return mirror, ""
                damage = pack_damage(mirror) or (
                    f"git fetch failed: {result.tail(3)}" if looks_corrupt(result.tail(5)) else None
                )
                if damage is None:
                    raise _fetch_error(repo, result)
        if damage is not None:
            _log.warning("mirror %s cannot be read, cloning it again: %s", mirror, damage)
        shutil.rmtree(mirror, ignore_errors=True)
        result = _run("clone", "--mirror", "--quiet", "--", repo, mirror)
        if not result.ok:
            shutil.rmtree(mirror, ignore_errors=True)
            raise _fetch_error(repo, result)
    return mirror, damage or ""


def _fetch_error(repo: str, result: GitResult) -> Exception:
    text = result.tail(5)
    if not is_remote(repo) or "not found" in text.lower() or "does not appear" in text:
        return BadInput(f"cannot read repository {shown(repo)}: {text}")
    # Network and server trouble: worth a retry.
    return InfrastructureError(f"git fetch of {shown(repo)} failed: {text}")


def resolve_commit(repo: Path, ref: str, *, what: str = "ref") -> str | None:
    """The commit SHA ``ref`` names in ``repo``, None when it names none; BadInput when
    ``ref`` is not a valid ref at all."""
    check_ref(ref, what=what)
    result = _run(
        "-C", repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"
    )
    return result.output.strip() if result.ok else None


def resolve_ref(mirror: Path, ref: str) -> str:
    """The commit SHA that ``ref`` (branch, tag, SHA, HEAD~1, ...) names in the mirror."""
    commit = resolve_commit(mirror, ref)
    if commit is None:
        raise BadInput(f"unknown ref {shown(ref)}")
    return commit


def checkout(repo: str, ref: str) -> Checkout:
    """Fetch ``repo`` and check ``ref`` out into a new workspace."""
    check_ref(ref)  # before any fetch: bad input costs nothing
    repo = normalize_repo(repo)
    mirror, healed = _update_mirror(repo)
    try:
        commit = resolve_ref(mirror, ref)
        dest = clone_workspace(mirror, commit)
    except (BadInput, InfrastructureError) as exc:
        # Damage that the pack check cannot see (a corrupt loose object): rebuilt once.
        if healed or not looks_corrupt(str(exc)):
            raise
        mirror, healed = _update_mirror(repo, damage=str(exc))
        commit = resolve_ref(mirror, ref)
        dest = clone_workspace(mirror, commit)
    return Checkout(repo=repo, ref=ref, commit=commit, path=dest, mirror=mirror, healed=healed)


def clone_workspace(mirror: Path, commit: str) -> Path:
    """A new workspace of ``commit``: a full clone of the mirror (every branch and
    tag, no depth limit), ``commit`` checked out detached."""
    dest = paths.workspaces() / f"{commit[:12]}-{uuid.uuid4().hex[:8]}"
    # Claimed before it exists: a run killed mid-clone leaves nothing unowned.
    # With it, what environments.install_project puts beside it later.
    _workspace_claims[dest] = ownership.claim(
        "workspace", paths_owned=(dest, dest.with_name(f"{dest.name}.site-py*"))
    )
    result = _run("clone", "--quiet", "--shared", "--no-checkout", "--", mirror, dest)
    if result.ok:
        # A full hex SHA, never an option (checkout has no --end-of-options in git 2.39).
        result = _run("-C", dest, "checkout", "--quiet", "--detach", check_commit_sha(commit))
    if not result.ok:
        remove_workspace(dest)
        raise InfrastructureError(f"checkout of {commit} failed: {result.tail(5)}")
    return dest


def is_shallow(repo: Path) -> bool:
    """Whether ``repo`` lacks history (``git clone --depth``, a shallow mirror)."""
    result = _run("-C", repo, "rev-parse", "--is-shallow-repository")
    if not result.ok:
        raise InfrastructureError(f"git rev-parse in {repo} failed: {result.tail()}")
    return result.output.strip() == "true"


def unshallow(repo: Path) -> bool:
    """Fetch the missing history and tags of a shallow ``repo`` from its origin.

    False when the origin has no more to give (it is shallow itself).
    """
    _run("-C", repo, "fetch", "--quiet", "--unshallow", "--tags", "origin", timeout=GIT_TIMEOUT)
    return not is_shallow(repo)


def tag_commit(repo: Path, tag: str) -> str | None:
    """The commit that the tag ``tag`` (``v1.0`` or ``refs/tags/v1.0``) points at in
    ``repo``; None when ``repo`` has no such tag (a branch of that name is no tag)."""
    name = tag.removeprefix("refs/tags/")
    return resolve_commit(repo, f"refs/tags/{name}", what="tag")


# The claims of this process's workspaces (cicd.ownership): held until removed.
_workspace_claims: dict[Path, ownership.Claim] = {}


def remove_workspace(path: Path) -> None:
    if path.is_relative_to(paths.workspaces()):
        shutil.rmtree(path, ignore_errors=True)
        # What environments.install_project put beside it, one per Python version.
        for site in path.parent.glob(f"{path.name}.site-py*"):
            shutil.rmtree(site, ignore_errors=True)
    held = _workspace_claims.pop(path, None)
    if held is not None:
        held.release()


# --- reading history -------------------------------------------------------------------


def changed_files(mirror: Path, base: str, commit: str) -> list[str]:
    """Paths that differ between ``base`` and ``commit`` (for change detection)."""
    base_sha = resolve_commit(mirror, base, what="base")
    if base_sha is None:
        raise BadInput(f"unknown base ref {shown(base)}")
    commit = check_commit_sha(commit)
    result = _run(
        "-C", mirror, "diff", "--name-only", "-z", "--end-of-options", base_sha, commit, "--"
    )
    if not result.ok:
        raise InfrastructureError(f"git diff {base_sha}..{commit} failed: {result.tail(5)}")
    return [name for name in result.stdout.decode(errors="surrogateescape").split("\0") if name]


def tracked_entries(workspace: Path) -> list[str]:
    """Every entry of ``git ls-files -s`` (``mode oid stage\tpath``), sorted.

    Read whole: a runner that kept only the tail of the listing would lose its
    first entries, and a change to them would be served its parent's cached result.
    """
    result = _run("-C", workspace, "ls-files", "-s", "-z")
    if not result.ok:
        raise InfrastructureError(f"git ls-files in {workspace} failed: {result.tail()}")
    listing = result.stdout.decode(errors="surrogateescape")
    return sorted(entry for entry in listing.split("\0") if entry)


def commit_timestamp(repo: Path, commit: str) -> int:
    """The committer date of ``commit`` in ``repo``, in seconds since the epoch."""
    sha = resolve_commit(repo, commit, what="commit")
    if sha is None:
        raise BadInput(f"{repo}: unknown commit {shown(commit)}")
    result = _run("-C", repo, "log", "-1", "--format=%ct", "--end-of-options", sha, "--")
    if not result.ok or not result.output.strip().isdigit():
        raise InfrastructureError(f"git log of {sha} in {repo} failed: {result.tail()}")
    return int(result.output.strip())


def nearest_tag(repo: Path, commit: str, match: str | None = None) -> str | None:
    """The nearest tag reachable from ``commit`` (a SHA), or None when there is none.

    ``match`` is a glob such as ``v*``, attached to its option so that it is
    never read as one.
    """
    argv = ["describe", "--tags", "--abbrev=0"]
    if match is not None:
        argv.append(f"--match={match}")
    result = _run("-C", repo, *argv, "--end-of-options", check_ref(commit, what="commit"))
    if result.ok:
        return result.output.strip()
    text = result.stderr
    if "No names found" in text or "No tags can describe" in text or "cannot describe" in text:
        return None
    raise InfrastructureError(f"git describe in {repo} failed: {result.tail()}")


def log(repo: Path, revisions: str, fmt: str, *, include_merges: bool = True) -> str:
    """``git log --topo-order --format=FMT REVISIONS``, whole (``A..B`` of checked SHAs)."""
    for part in revisions.split(".."):
        check_ref(part, what="revision")
    argv = ["log", "--topo-order", f"--format={fmt}"]
    if not include_merges:
        argv.append("--no-merges")
    result = _run("-C", repo, *argv, "--end-of-options", revisions, "--", timeout=120)
    if not result.ok:
        raise InfrastructureError(f"git log {revisions} in {repo} failed: {result.tail()}")
    return result.output


def ls_remote(repo: str, *, timeout: float = 120.0) -> str:
    """``git ls-remote --heads --tags -- REPO``, whole (the poller's view of a remote)."""
    repo = check_repo_address(repo)
    result = _run("ls-remote", "--heads", "--tags", "--", repo, timeout=timeout)
    if not result.ok:
        why = "timed out" if result.timed_out else f"exit {result.returncode}"
        raise InfrastructureError(f"git ls-remote {repo} failed ({why}): {result.tail()}")
    return result.output


# --- the code a benchmark baseline measured ------------------------------------------


def last_commit_changing(workspace: Path, path: str) -> str | None:
    """The last commit of ``workspace``'s HEAD history that changed ``path``, or None
    (the file is not committed, or the workspace is not a git checkout)."""
    result = _run("-C", workspace, "log", "-1", "--format=%H", "HEAD", "--", path)
    sha = result.output.strip()
    return sha if result.ok and sha else None


def add_worktree(workspace: Path, commit: str, dest: Path) -> Path:
    """Check ``commit`` out at ``dest`` as a detached worktree of ``workspace``
    (shares its objects: no copy of the history)."""
    sha = check_commit_sha(commit)
    result = _run("-C", workspace, "worktree", "add", "--quiet", "--detach", "--", dest, sha)
    if not result.ok:
        shutil.rmtree(dest, ignore_errors=True)
        raise InfrastructureError(f"git worktree add {sha[:12]} failed: {result.tail()}")
    return dest


def remove_worktree(workspace: Path, dest: Path) -> None:
    _run("-C", workspace, "worktree", "remove", "--force", "--", dest)
    shutil.rmtree(dest, ignore_errors=True)
    _run("-C", workspace, "worktree", "prune")
