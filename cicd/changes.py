"""Change detection, for instant reruns (seed 000).

``source_fingerprint`` hashes what a job's result depends on in the commit:
every tracked file except those matched by ``ignore_paths`` in cicd.yaml. It is
one of a job's declared inputs (``tasks/job.py``), so a rerun of the same
inputs is served from the Prefect cache. ``only_ignored`` tells when a change
touches nothing any job depends on, so the jobs can be skipped outright.

Pattern rules (like .gitignore): ``*`` and ``?`` stay inside one path segment,
``**`` crosses segments, a pattern without ``/`` matches the file name at any
depth. Files that decide the pipeline itself can never be ignored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from cicd.config import CONFIG_FILE
from cicd.git import tracked_entries

# Changing these changes the pipeline or the environment: everything reruns.
NEVER_IGNORED = frozenset({CONFIG_FILE, "pyproject.toml", "setup.py", "setup.cfg"})


@lru_cache(maxsize=256)
def _pattern(glob: str) -> re.Pattern[str]:
    anchored = "/" in glob.strip("/")
    out = []
    i = 0
    glob = glob.strip("/")
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    body = "".join(out)
    return re.compile(body if anchored else f"(?:.*/)?{body}")


def is_ignored(path: str, ignore_paths: Sequence[str]) -> bool:
    if path in NEVER_IGNORED or path.startswith("requirements"):
        return False
    return any(_pattern(glob).fullmatch(path) for glob in ignore_paths)


def only_ignored(changed: Iterable[str], ignore_paths: Sequence[str]) -> bool:
    """True when there are changes and every one of them is ignored."""
    changed = list(changed)
    return bool(changed) and all(is_ignored(path, ignore_paths) for path in changed)


def source_fingerprint(workspace: Path, ignore_paths: Sequence[str]) -> str:
    """A hash of every tracked file that some job depends on: mode, git's object
    id (a hash of the content) and path, for every entry of the index."""
    digest = hashlib.sha256()
    for entry in tracked_entries(workspace):
        meta, _, path = entry.partition("\t")
        if not is_ignored(path, ignore_paths):
            digest.update(f"{meta}\t{path}\0".encode())
    return digest.hexdigest()
