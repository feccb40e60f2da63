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


def _regex(glob: str) -> str:
    """The regular expression of one pattern, matched against the whole path."""
    anchored = "/" in glob
    out = []
    i = 0
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
    return body if anchored else f"(?:.*/)?{body}"


# As _regex reads them: "**/" also stands for the "/" after it.
_WILDCARD_TOKENS = re.compile(r"\*\*/|\*\*|\*|\?")


class IgnoreMatcher:
    """Every ``ignore_paths`` pattern compiled once, so that matching is linear in
    files x patterns, and in practice a few dictionary lookups per file.

    The previous design compiled each pattern through an ``lru_cache`` of 256
    entries; with more patterns than that every lookup recompiled, and 200,000
    patterns ran for more than 300 s (issue 13). Here a pattern without
    wildcards is a set member; any other is filed under the literal text a
    matching path must hold at a known place: at its start (``docs/`` of
    ``docs/**``), at the start of one of its directories or of its file name
    (``build-`` of ``build-*``, ``cache/`` of ``**/cache/*``) or at its end
    (``.md`` of ``*.md``), whichever is longest, else anywhere (``cache`` of
    ``*cache*``). A path is tried only against the groups that its own pieces
    select, each group one regular expression compiled when first needed.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._paths: set[str] = set()
        self._names: set[str] = set()
        # kind -> literal -> patterns
        self._groups: dict[str, dict[str, list[str]]] = {
            "start": {},
            "segment": {},
            "end": {},
            "inside": {},
        }
        self._others: list[str] = []
        self._compiled: dict[tuple[str, str], re.Pattern[str]] = {}
        for pattern in self.patterns:
            glob = pattern.strip("/")
            if glob:  # an empty pattern matched no path before either
                self._add(glob)
        self._lengths = {
            kind: sorted({len(key) for key in group}) for kind, group in self._groups.items()
        }

    def _add(self, glob: str) -> None:
        anchored = "/" in glob
        tokens = list(_WILDCARD_TOKENS.finditer(glob))
        if not tokens:
            (self._paths if anchored else self._names).add(glob)
            return
        head, end = glob[: tokens[0].start()], glob[tokens[-1].end() :]
        kind, key = ("start" if anchored else "segment"), head
        if not head and tokens[0].group() == "**/":
            # "**/cache/*": "cache/" starts one of the path's directories.
            following = tokens[1].start() if len(tokens) > 1 else len(glob)
            kind, key = "segment", glob[3:following]
        # Without "/", the pattern is tried at the start of every directory and of
        # the file name (_regex prefixes "(?:.*/)?"), so "segment" holds for it too.
        if len(end) > len(key):
            kind, key = "end", end
        if not key:
            # "*cache*": the longest literal between wildcards, found anywhere.
            runs = _WILDCARD_TOKENS.split(glob)
            kind, key = "inside", max(runs, key=len)
        if key:
            self._groups[kind].setdefault(key, []).append(glob)
        else:
            self._others.append(glob)

    def _group_matches(self, kind: str, key: str, globs: list[str], path: str) -> bool:
        compiled = self._compiled.get((kind, key))
        if compiled is None:
            compiled = re.compile("|".join(f"(?:{_regex(glob)})" for glob in globs))
            self._compiled[(kind, key)] = compiled
        return compiled.fullmatch(path) is not None

    def _selected(self, kind: str, path: str, at: int) -> bool:
        """Try the groups of ``kind`` whose literal is found at offset ``at``
        (-1: at the end of ``path``)."""
        group = self._groups[kind]
        for size in self._lengths[kind]:
            key = path[-size:] if at < 0 else path[at : at + size]
            if len(key) < size:
                break
            globs = group.get(key)
            if globs and self._group_matches(kind, key, globs, path):
                return True
        return False

    def _segment_selected(self, path: str) -> bool:
        if not self._lengths["segment"]:
            return False
        at = 0
        while at >= 0:
            if self._selected("segment", path, at):
                return True
            slash = path.find("/", at)
            at = slash + 1 if slash >= 0 else -1
        return False

    def _inside_selected(self, path: str) -> bool:
        group = self._groups["inside"]
        for size in self._lengths["inside"]:
            for at in range(len(path) - size + 1):
                key = path[at : at + size]
                globs = group.get(key)
                if globs and self._group_matches("inside", key, globs, path):
                    return True
        return False

    def matches(self, path: str) -> bool:
        if path in NEVER_IGNORED or path.startswith("requirements"):
            return False
        return (
            path in self._paths
            or path.rsplit("/", 1)[-1] in self._names
            or self._selected("start", path, 0)
            or self._segment_selected(path)
            or self._selected("end", path, -1)
            or self._inside_selected(path)
            or (bool(self._others) and self._group_matches("other", "", self._others, path))
        )


@lru_cache(maxsize=8)
def _matcher(patterns: tuple[str, ...]) -> IgnoreMatcher:
    # One entry per configuration (not per pattern): nothing to thrash.
    return IgnoreMatcher(patterns)


def ignore_matcher(ignore_paths: Sequence[str] | IgnoreMatcher) -> IgnoreMatcher:
    if isinstance(ignore_paths, IgnoreMatcher):
        return ignore_paths
    return _matcher(tuple(ignore_paths))


def is_ignored(path: str, ignore_paths: Sequence[str] | IgnoreMatcher) -> bool:
    return ignore_matcher(ignore_paths).matches(path)


def only_ignored(changed: Iterable[str], ignore_paths: Sequence[str] | IgnoreMatcher) -> bool:
    """True when there are changes and every one of them is ignored."""
    matcher = ignore_matcher(ignore_paths)
    changed = list(changed)
    return bool(changed) and all(matcher.matches(path) for path in changed)


def source_fingerprint(workspace: Path, ignore_paths: Sequence[str] | IgnoreMatcher) -> str:
    """A hash of every tracked file that some job depends on: mode, git's object
    id (a hash of the content) and path, for every entry of the index."""
    matcher = ignore_matcher(ignore_paths)
    digest = hashlib.sha256()
    for entry in tracked_entries(workspace):
        meta, _, path = entry.partition("\t")
        if not matcher.matches(path):
            digest.update(f"{meta}\t{path}\0".encode())
    return digest.hexdigest()
