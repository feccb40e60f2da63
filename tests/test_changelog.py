"""Changelog from a real git history: tags, conventional commits, release record."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cicd.errors import BadInput
from cicd.sample import commit_all, git
from tasks.changelog import (
    BREAKING_TITLE,
    Commit,
    commits_between,
    group_conventional,
    parse_commit,
    previous_tag,
    release_record,
    render_changelog,
    render_release_markdown,
)
from tasks.publishing import PublishedFile

SECOND_RELEASE = [
    "feat(api): add the search endpoint",
    "fix: handle an empty query",
    "Update the readme",  # not conventional: lands in Other
    "feat!: drop the v1 client",
    "refactor(core): split the parser\n\nBREAKING CHANGE: Parser.parse now returns a list",
    "docs: describe releases",
    "style: reformat",  # a type outside the list: Other, type kept in the text
    "perf(db): batch the writes",
]


def commit(repo: Path, message: str) -> str:
    return commit_all(repo, message)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main: an untagged commit, v0.1.0, the SECOND_RELEASE commits, v0.2.0 (annotated), one more.

    Among the second release's commits: a ``nightly-1`` tag (not a release)
    and a merge of a side branch.
    """
    repo = tmp_path_factory.mktemp("changelog") / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    commit(repo, "chore: scaffold")
    commit(repo, "feat: first feature")
    git(repo, "tag", "v0.1.0")  # lightweight
    for message in SECOND_RELEASE[:2]:
        commit(repo, message)
    git(repo, "tag", "nightly-1")  # not a release tag
    git(repo, "checkout", "--quiet", "-b", "side")
    commit(repo, "test: cover the side branch")
    git(repo, "checkout", "--quiet", "main")
    for message in SECOND_RELEASE[2:]:
        commit(repo, message)
    git(repo, "merge", "--quiet", "--no-ff", "-m", "Merge branch 'side'", "side")
    git(repo, "tag", "-a", "v0.2.0", "-m", "release 0.2.0")
    commit(repo, "chore: after the release")
    return repo


def test_previous_tag(history: Path) -> None:
    assert previous_tag(history, "v0.1.0") is None  # the first release
    assert previous_tag(history, "v0.2.0") == "nightly-1"  # any tag, as git describe does
    assert previous_tag(history, "v0.2.0", match="v*") == "v0.1.0"
    assert previous_tag(history, "HEAD", match="v*") == "v0.2.0"
    with pytest.raises(BadInput, match=re.escape("unknown tag 'v9.9.9'")):
        previous_tag(history, "v9.9.9")


def test_previous_tag_of_a_tagged_root_commit(tmp_path: Path) -> None:
    git(tmp_path, "init", "--quiet", "--initial-branch=main")
    commit(tmp_path, "feat: everything")
    git(tmp_path, "tag", "v1.0.0")
    assert previous_tag(tmp_path, "v1.0.0") is None


def test_commits_between_two_tags(history: Path) -> None:
    commits = commits_between(history, "v0.1.0", "v0.2.0")
    subjects = [c.subject for c in commits]
    # The merge commit is left out, the side branch's commit is in.
    assert sorted(subjects) == sorted(
        [m.split("\n")[0] for m in SECOND_RELEASE] + ["test: cover the side branch"]
    )
    # Newest first along main.
    on_main = [s for s in subjects if s != "test: cover the side branch"]
    assert on_main == [m.split("\n")[0] for m in reversed(SECOND_RELEASE)]
    assert len(commits) == len(SECOND_RELEASE) + 1
    assert all(len(c.sha) == 40 for c in commits)
    refactor = next(c for c in commits if c.subject.startswith("refactor"))
    assert refactor.body == "BREAKING CHANGE: Parser.parse now returns a list"
    with_merges = commits_between(history, "v0.1.0", "v0.2.0", include_merges=True)
    assert "Merge branch 'side'" in [c.subject for c in with_merges]
    # Without a previous tag: the whole history up to the tag.
    assert len(commits_between(history, None, "v0.1.0")) == 2
    with pytest.raises(BadInput, match="unknown ref"):
        commits_between(history, "v0.1.0", "no-such-ref")


def test_grouping_by_conventional_type(history: Path) -> None:
    groups = group_conventional(commits_between(history, "v0.1.0", "v0.2.0"))
    titles = [g.title for g in groups]
    assert titles == [
        BREAKING_TITLE, "Features", "Bug Fixes", "Performance", "Refactoring",
        "Documentation", "Tests", "Other",
    ]
    by_title = {g.title: g.entries for g in groups}
    assert [e.description for e in by_title[BREAKING_TITLE]] == [
        "split the parser", "drop the v1 client",
    ]
    assert by_title[BREAKING_TITLE][0].breaking_note == "Parser.parse now returns a list"
    features = by_title["Features"]
    assert [(e.scope, e.description, e.breaking) for e in features] == [
        (None, "drop the v1 client", True),
        ("api", "add the search endpoint", False),
    ]
    assert [e.description for e in by_title["Other"]] == ["style: reformat", "Update the readme"]


@pytest.mark.parametrize(
    ("subject", "body", "expected"),
    [
        ("fix(ui)!: rename props", "", ("fix", "ui", "rename props", True, None)),
        ("FEAT: shout", "", ("feat", None, "shout", False, None)),
        ("chore: x", "text\n\nBREAKING-CHANGE: gone", ("chore", None, "x", True, "gone")),
        ("fix:missing space", "", ("other", None, "fix:missing space", False, None)),
        ("feat(): empty scope", "", ("feat", None, "empty scope", False, None)),
        # A mention of the words inside a paragraph is not a footer.
        ("docs: y", "mentions a BREAKING CHANGE: here", ("docs", None, "y", False, None)),
    ],
)
def test_parse_commit(subject: str, body: str, expected: tuple[object, ...]) -> None:
    entry = parse_commit(Commit("a" * 40, subject, body))
    assert (entry.type, entry.scope, entry.description, entry.breaking,
            entry.breaking_note) == expected


def test_render_changelog(history: Path) -> None:
    groups = group_conventional(commits_between(history, "v0.1.0", "v0.2.0"))
    text = render_changelog("0.2.0", groups, date="2026-01-02")
    assert text.startswith("## 0.2.0 (2026-01-02)\n")
    order = [text.index(f"### {title}") for title in (BREAKING_TITLE, "Features", "Other")]
    assert order == sorted(order)
    breaking = text.split(f"### {BREAKING_TITLE}")[1].split("###")[0]
    assert "- **core:** Parser.parse now returns a list (" in breaking
    assert "- drop the v1 client (" in breaking
    assert "- drop the v1 client **(breaking)** (" in text
    assert "- **api:** add the search endpoint (" in text
    assert render_changelog("0.0.1", []) == (
        "## 0.0.1\n\nNo changes since the previous release.\n"
    )


def test_release_record(history: Path) -> None:
    commits = commits_between(history, "v0.1.0", "v0.2.0")
    notes = render_changelog("0.2.0", group_conventional(commits))
    files = [
        PublishedFile("pkg-0.2.0-py3-none-any.whl", "1" * 64, 1234, "uploaded"),
        PublishedFile("pkg-0.2.0.tar.gz", "2" * 64, 999, "skipped"),
    ]
    record = release_record(
        "pkg", "0.2.0", "v0.2.0", files, notes, previous_tag="v0.1.0",
        commit=git(history, "rev-parse", "v0.2.0^{commit}"),
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert json.loads(json.dumps(record)) == record
    assert record["files"][1] == {
        "name": "pkg-0.2.0.tar.gz", "sha256": "2" * 64, "size": 999, "action": "skipped"
    }
    assert record["created_at"] == "2026-01-02T03:04:05+00:00"
    markdown = render_release_markdown(record)
    assert markdown.startswith("# pkg 0.2.0\n")
    assert f"| pkg-0.2.0-py3-none-any.whl | 1234 | `{'1' * 64}` | uploaded |" in markdown
    assert "- Previous tag: `v0.1.0`" in markdown
    assert notes.strip() in markdown
    first = render_release_markdown(release_record("pkg", "0.1.0", "v0.1.0", [], "", dry_run=True))
    assert first.startswith("# pkg 0.1.0 (dry run)")
    assert "none (first release)" in first and "No files." in first
