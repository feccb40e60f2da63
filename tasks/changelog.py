"""The release notes, as in the seed's ``create-release`` job: the commits since
the previous tag, grouped by conventional-commit type, and the release record.

The seed lists raw subjects (``git log PREV..HEAD --pretty="- %s"``); grouping
by type puts what users need first (breaking changes, then features and
fixes), and commits that do not follow the convention still appear, under
"Other", so nothing is lost.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cicd import git
from cicd.errors import BadInput
from tasks.publishing import PublishedFile

# Section order of the changelog: most relevant to users first.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("feat", "Features"),
    ("fix", "Bug Fixes"),
    ("perf", "Performance"),
    ("refactor", "Refactoring"),
    ("docs", "Documentation"),
    ("test", "Tests"),
    ("build", "Build System"),
    ("ci", "Continuous Integration"),
    ("chore", "Chores"),
    ("other", "Other"),
)
BREAKING_TITLE = "Breaking Changes"
_KNOWN_TYPES = {kind for kind, _ in SECTIONS}

# "type(scope)!: description"; the scope and the bang are optional.
_HEADER = re.compile(
    r"^(?P<type>[A-Za-z]+)(?:\((?P<scope>[^()\n]*)\))?(?P<bang>!)?: +(?P<desc>\S.*)$"
)
# A footer may be "BREAKING CHANGE: text" or, per the spec, "BREAKING-CHANGE: text".
_BREAKING_FOOTER = re.compile(r"^BREAKING[ -]CHANGE: *(?P<note>.*)$", re.MULTILINE)
_FIELD = "\x1f"
_RECORD = "\x1e"


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str
    body: str


@dataclass(frozen=True)
class ChangelogEntry:
    sha: str
    type: str
    scope: str | None
    description: str
    breaking: bool
    breaking_note: str | None


@dataclass(frozen=True)
class ChangelogGroup:
    title: str
    entries: tuple[ChangelogEntry, ...]


# ---------------------------------------------------------------------------
# git (every call is in cicd.git; refs are checked there before use)


def previous_tag(repo: Path, tag: str, match: str | None = None) -> str | None:
    """The nearest tag reachable from ``tag``'s parent; None for the first release.

    ``match`` (a glob such as ``v*``) ignores tags that are not releases.
    """
    commit = git.resolve_commit(repo, tag, what="tag")
    if commit is None:
        raise BadInput(f"{repo}: unknown tag {git.shown(tag)}")
    if git.resolve_commit(repo, f"{commit}^") is None:
        return None  # the tagged commit is the root commit: nothing came before
    return git.nearest_tag(repo, f"{commit}^", match)


def commits_between(
    repo: Path, since: str | None, until: str, *, include_merges: bool = False
) -> list[Commit]:
    """Commits reachable from ``until`` but not ``since`` (all of them if None), newest first.

    Merge commits are left out by default: their subjects ("Merge pull
    request ...") repeat the commits they bring in.
    """
    until_sha = git.resolve_commit(repo, until)
    if until_sha is None:
        raise BadInput(f"{repo}: unknown ref {git.shown(until)}")
    revs = until_sha
    if since is not None:
        since_sha = git.resolve_commit(repo, since)
        if since_sha is None:
            raise BadInput(f"{repo}: unknown ref {git.shown(since)}")
        revs = f"{since_sha}..{until_sha}"
    # --topo-order (in git.log): commits made within one second have equal dates,
    # and date order would mix them up; a child is always listed before its parent.
    output = git.log(
        repo, revs, f"%H{_FIELD}%s{_FIELD}%b{_RECORD}", include_merges=include_merges
    )
    commits: list[Commit] = []
    for record in output.split(_RECORD):
        record = record.strip("\n")
        if not record:
            continue
        sha, subject, body = record.split(_FIELD, 2)
        commits.append(Commit(sha=sha, subject=subject, body=body.strip()))
    return commits


# ---------------------------------------------------------------------------
# Grouping and rendering


def parse_commit(commit: Commit) -> ChangelogEntry:
    """One commit as a changelog entry; non-conventional subjects become type "other"."""
    footer = _BREAKING_FOOTER.search(commit.body)
    header = _HEADER.match(commit.subject.strip())
    if header is None:
        kind, scope, description, bang = "other", None, commit.subject.strip(), False
    else:
        kind = header["type"].lower()
        kind = kind if kind in _KNOWN_TYPES else "other"
        scope = (header["scope"] or "").strip() or None
        description = header["desc"].strip()
        bang = header["bang"] is not None
        if kind == "other":
            # Keep the unknown type visible ("style: ...", "revert: ...").
            description = commit.subject.strip()
    note = footer["note"].strip() if footer is not None else None
    return ChangelogEntry(
        sha=commit.sha,
        type=kind,
        scope=scope,
        description=description,
        breaking=bang or footer is not None,
        breaking_note=note or None,
    )


def group_conventional(commits: Sequence[Commit]) -> list[ChangelogGroup]:
    """Entries grouped in :data:`SECTIONS` order, "Breaking Changes" first; empty groups omitted.

    A breaking commit appears both in "Breaking Changes" (with its footer's
    note when it has one) and in its type's section, where it is flagged.
    """
    entries = [parse_commit(c) for c in commits]
    groups: list[ChangelogGroup] = []
    breaking = tuple(e for e in entries if e.breaking)
    if breaking:
        groups.append(ChangelogGroup(BREAKING_TITLE, breaking))
    for kind, title in SECTIONS:
        found = tuple(e for e in entries if e.type == kind)
        if found:
            groups.append(ChangelogGroup(title, found))
    return groups


def _line(entry: ChangelogEntry, *, in_breaking_section: bool) -> str:
    scope = f"**{entry.scope}:** " if entry.scope else ""
    text = entry.description
    if in_breaking_section and entry.breaking_note:
        text = entry.breaking_note
    flag = " **(breaking)**" if entry.breaking and not in_breaking_section else ""
    return f"- {scope}{text}{flag} ({entry.sha[:7]})"


def render_changelog(
    version: str, groups: Sequence[ChangelogGroup], *, date: str | None = None
) -> str:
    """Markdown: a heading for the version, one section per group."""
    heading = f"## {version}" + (f" ({date})" if date else "")
    lines = [heading, ""]
    if not groups:
        lines += ["No changes since the previous release.", ""]
    for group in groups:
        lines += [f"### {group.title}", ""]
        breaking_section = group.title == BREAKING_TITLE
        lines += [_line(e, in_breaking_section=breaking_section) for e in group.entries]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------
# Release record


def release_record(
    name: str,
    version: str,
    tag: str,
    files: Sequence[PublishedFile],
    changelog_md: str,
    *,
    previous_tag: str | None = None,
    commit: str | None = None,
    repository_url: str | None = None,
    dry_run: bool = False,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The JSON-able record of a release, kept as the run's artifact."""
    when = created_at or datetime.now(UTC)
    return {
        "name": name,
        "version": version,
        "tag": tag,
        "previous_tag": previous_tag,
        "commit": commit,
        "repository_url": repository_url,
        "dry_run": dry_run,
        "created_at": when.isoformat(timespec="seconds"),
        "files": [f.to_dict() for f in files],
        "changelog": changelog_md,
    }


def render_release_markdown(record: Mapping[str, Any]) -> str:
    """The record as markdown: what was released, the files with their hashes, the changelog."""
    title = f"# {record['name']} {record['version']}"
    if record.get("dry_run"):
        title += " (dry run)"
    lines = [title, ""]
    facts = [
        ("Tag", record.get("tag")),
        ("Previous tag", record.get("previous_tag") or "none (first release)"),
        ("Commit", record.get("commit")),
        ("Published to", record.get("repository_url")),
        ("Created", record.get("created_at")),
    ]
    lines += [f"- {label}: `{value}`" for label, value in facts if value]
    lines += ["", "## Files", ""]
    files = record.get("files") or []
    if files:
        lines += ["| File | Size | SHA-256 | Action |", "| --- | ---: | --- | --- |"]
        lines += [
            f"| {f['name']} | {f['size']} | `{f['sha256']}` | {f['action']} |" for f in files
        ]
    else:
        lines.append("No files.")
    lines += ["", record.get("changelog", "").strip(), ""]
    return "\n".join(lines)
