"""The caches a quality tool keeps from one run of a project to the next.

mypy without its cache checks every module again, the standard library's
stubs included: on the sample that is 1.35 s against 0.25 s with it, the
largest single cost of the quality job. A CI script keeps it the same way
(GitHub's ``actions/cache`` of ``.mypy_cache``, https://github.com/actions/cache;
GitLab's ``cache:``), so we do:

- a run starts from a copy of the project's last published cache, put where
  mypy keeps it by default (``.mypy_cache`` in the workspace, which black,
  ruff and pytest already leave alone) and named by ``MYPY_CACHE_DIR``, which
  mypy reads over its config's ``cache_dir``
  (https://mypy.readthedocs.io/en/stable/command_line.html#incremental-mode);
- once the tool has run (passed or failed, not timed out or stopped), its cache
  is published back: copied beside the store, then renamed over it under a
  lock, so a run never reads half a cache and the last run to end wins.

A cache never decides a verdict: mypy checks each cached module against the
hash of its source (a new checkout has new mtimes) and rechecks what changed,
so a failing commit fails with a warm cache too (tests/test_quality_caches.py).
It is not a job input either: a cold and a warm run give the same result.

The store is per repository, tool, tool pins and environment (its
dependencies and Python), under ``$CICD_HOME/caches``. A run of untrusted code
(a fork's pull request) reads it and never writes it: as GitHub keeps a pull
request's cache writes to its own merge ref
(https://docs.github.com/en/actions/writing-workflows/choosing-what-your-workflow-does/caching-dependencies-to-speed-up-workflows#restrictions-for-accessing-a-cache),
a pull request cannot hand the next trusted run a cache of its making.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cicd import paths
from cicd.locking import file_lock

# The tools with a cache worth keeping: the variable that places it, and its
# directory in the workspace. ruff's and black's caches are keyed by absolute
# paths (a new workspace per run misses them) and cost tens of milliseconds.
CACHED_TOOLS: Final = {"mypy": ("MYPY_CACHE_DIR", ".mypy_cache")}

_log = logging.getLogger("cicd.tool_caches")


@dataclass(frozen=True)
class ToolCaches:
    """Whose caches a job reads, and whether it may publish its own."""

    # The repository address (cicd.git.Checkout.repo).
    scope: str
    # False for untrusted code: it reads the store, never writes it.
    publish: bool = True


def store_of(caches: ToolCaches, tool: str, key: list[str]) -> Path:
    """The store of ``tool``'s cache for this repository and ``key`` (pins, environment)."""
    digest = hashlib.sha256(json.dumps([caches.scope, tool, *key]).encode()).hexdigest()
    return paths.home() / "caches" / f"{tool}-{digest[:20]}"


def workspace_cache(tool: str, workspace: Path) -> Path:
    return workspace / CACHED_TOOLS[tool][1]


def cache_environ(tool: str, workspace: Path) -> dict[str, str]:
    """The variable that points ``tool`` at its cache in ``workspace``; none for
    a tool without one."""
    if tool not in CACHED_TOOLS:
        return {}
    return {CACHED_TOOLS[tool][0]: str(workspace_cache(tool, workspace))}


def _lock(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


def _copied(source: Path, target: Path, failure: str) -> bool:
    """``source`` copied to ``target`` (symlinks as links); on an error, nothing
    left at ``target`` and ``failure`` logged with it."""
    try:
        shutil.copytree(source, target, symlinks=True)
    except OSError as exc:
        _log.warning("%s: %s", failure, exc)
        shutil.rmtree(target, ignore_errors=True)
        return False
    return True


def seed(store: Path, target: Path) -> bool:
    """Copy the published cache to ``target``; whether there was one. A cache
    that cannot be copied is left out: the tool then starts cold."""
    if target.exists():
        return False  # the commit brought its own (a committed .mypy_cache): left as it is
    # Under the lock: a publication renames the store away.
    with file_lock(_lock(store)):
        if not store.is_dir():
            return False
        return _copied(store, target, f"the cache {store} was not copied, starting cold")


def publish(target: Path, store: Path) -> bool:
    """Make ``target`` the published cache; whether it was published. The copy
    is made outside the lock, the swap of two renames inside it."""
    if not target.is_dir():
        return False
    staged = store.with_name(f"{store.name}.{uuid.uuid4().hex[:12]}.new")
    if not _copied(target, staged, f"the cache {target} was not published"):
        return False
    retired = store.with_name(f"{store.name}.{uuid.uuid4().hex[:12]}.old")
    with file_lock(_lock(store)):
        if store.exists():
            os.rename(store, retired)
        os.rename(staged, store)
    shutil.rmtree(retired, ignore_errors=True)
    return True
