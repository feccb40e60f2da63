"""Quality as the project runs it: the tools it configures, at the versions it
pins, with its own configuration (issue 9).

Detection and pins are read from real files; the end-to-end test runs the CLI
on a repository built here, with real ruff and mypy from the package index at
the pinned (old) versions, and a test that needs a package listed only in a
PEP 735 dependency group.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cicd import paths
from cicd.config import detect_defaults
from cicd.quality_detection import tool_requirements
from cicd.sample import commit_all, git
from tests.conftest import BIN

PRE_COMMIT = """\
repos:
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.4.1
    hooks:
      - id: ruff
      - id: ruff-format
  - repo: https://github.com/pre-commit/mirrors-mypy
    rev: v1.10.0
    hooks:
      - id: mypy
        additional_dependencies: [types-six]
"""


def _project(root: Path, pyproject: str = "", pre_commit: str | None = None) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text('[project]\nname = "pkg"\nversion = "1"\n' + pyproject)
    if pre_commit is not None:
        (root / ".pre-commit-config.yaml").write_text(pre_commit)
    return root


def test_pins_come_from_pre_commit_revs_then_dependencies_then_latest(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        '[dependency-groups]\nlint = ["black==24.2.0", "isort>=5,<6"]\n'
        '[project.optional-dependencies]\ndev = ["ruff>=0.9"]\n',
        pre_commit=PRE_COMMIT,
    )
    wanted = tool_requirements(root, _toml(root), ["ruff", "ruff_format", "mypy", "black"])
    # The hook's rev wins over the dev extra's ruff>=0.9; mypy brings its hook's extras.
    assert wanted == ["black==24.2.0", "mypy==1.10.0", "ruff==0.4.1", "types-six"]
    assert tool_requirements(root, _toml(root), ["isort", "flake8"]) == ["flake8", "isort<6,>=5"]


def _toml(root: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text())


@pytest.mark.parametrize(
    ("tool", "pyproject", "name", "text"),
    [
        ("ruff", "", "ruff.toml", "line-length = 90\n"),
        ("ruff", "", ".ruff.toml", "line-length = 90\n"),
        ("ruff", "[tool.ruff]\nline-length = 90\n", None, ""),
        ("ruff,ruff_format", "[tool.ruff.format]\nquote-style = 'single'\n", None, ""),
        ("mypy", "", "mypy.ini", "[mypy]\nstrict = True\n"),
        ("mypy", "", ".mypy.ini", "[mypy]\nstrict = True\n"),
        ("mypy", "[tool.mypy]\nstrict = true\n", None, ""),
        ("mypy", "", "setup.cfg", "[mypy]\nstrict = True\n"),
        ("black", "[tool.black]\nline-length = 90\n", None, ""),
        ("isort", "", ".isort.cfg", "[settings]\nprofile = black\n"),
        ("isort", "[tool.isort]\nprofile = 'black'\n", None, ""),
        ("isort", "", "setup.cfg", "[isort]\nprofile = black\n"),
        ("flake8", "", ".flake8", "[flake8]\nmax-line-length = 90\n"),
        ("flake8", "", "setup.cfg", "[flake8]\nmax-line-length = 90\n"),
        ("flake8", "", "tox.ini", "[flake8]\nmax-line-length = 90\n"),
        ("pyright", "", "pyrightconfig.json", '{"include": ["src"]}\n'),
        ("pyright", "[tool.pyright]\ninclude = ['src']\n", None, ""),
    ],
)
def test_each_tool_is_detected_from_the_files_it_reads(
    tmp_path: Path, tool: str, pyproject: str, name: str | None, text: str
) -> None:
    root = _project(tmp_path, pyproject)
    if name is not None:
        (root / name).write_text(text)
    assert list(detect_defaults(root).quality.tools()) == tool.split(",")


def test_tools_run_by_pre_commit_hooks_are_detected_without_paths(tmp_path: Path) -> None:
    root = _project(tmp_path, pre_commit=PRE_COMMIT)
    quality = detect_defaults(root).quality
    assert set(quality.tools()) == {"ruff", "ruff_format", "mypy"}
    assert quality.ruff is not None and quality.ruff.paths == []
    # mypy has no `files` here: the package directories, as before.
    assert quality.mypy is not None and quality.mypy.paths == ["src/pkg"]


def test_mypy_with_files_configured_gets_no_path(tmp_path: Path) -> None:
    root = _project(tmp_path, '[tool.mypy]\nfiles = ["src/pkg"]\n')
    quality = detect_defaults(root).quality
    assert quality.mypy is not None and quality.mypy.paths == []


# ------------------------------------------------------------------ end to end

PYPROJECT = """\
[project]
name = "linted"
version = "1.0"
dependencies = []

[dependency-groups]
test = ["pytest", {include-group = "helpers"}]
helpers = ["six"]

[tool.ruff]
line-length = 100

[tool.mypy]
strict = true
files = ["src/linted"]
"""

# Outside mypy's `files`: strict mypy over "." would flag the untyped function.
LOOSE_SCRIPT = "def untyped(value):\n    return value\n"
# Formatted as ruff 0.4.1 formats it; newer ruff joins implicitly concatenated
# strings that fit on one line (https://github.com/astral-sh/ruff/issues/9457;
# ruff 0.17 reformats this file), so an unpinned `ruff format --check` fails it.
GREETING = 'GREETING = "hello, " "world"\n'


USE_OF_DOUBLE = "from linted import double\n\nFOUR: int = double(2)\n"


def mypy_stores() -> list[Path]:
    found = (paths.home() / "caches").glob("mypy-*")
    return sorted(store for store in found if store.is_dir())


def last_quality_log() -> str:
    runs = sorted(paths.runs().glob("pr-validation-*"), key=lambda run: run.stat().st_mtime)
    return (runs[-1] / "logs" / "quality.log").read_text()


def build_linted_repo(root: Path) -> Path:
    repo = root / "linted"
    (repo / "src" / "linted").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "scripts").mkdir()
    (repo / "pyproject.toml").write_text(PYPROJECT)
    (repo / ".pre-commit-config.yaml").write_text(PRE_COMMIT.replace("[types-six]", "[]"))
    (repo / "src" / "linted" / "__init__.py").write_text(
        "def double(value: int) -> int:\n    return value * 2\n"
    )
    # Unchanged by the red commits below: a cached check of it must not hide
    # an error that a change of `double` makes here.
    (repo / "src" / "linted" / "use.py").write_text(USE_OF_DOUBLE)
    (repo / "scripts" / "loose.py").write_text(LOOSE_SCRIPT)
    (repo / "src" / "linted" / "greeting.py").write_text(GREETING)
    (repo / "tests" / "test_linted.py").write_text(
        textwrap.dedent(
            """\
            import six  # only in the `helpers` group, included by `test`

            from linted import double


            def test_double() -> None:
                assert double(2) == 4 and six.PY3
            """
        )
    )
    git(repo, "init", "--quiet", "--initial-branch=main")
    commit_all(repo, "feat: linted")
    return repo


def run_json(repo: Path, ref: str) -> tuple[int, dict[str, Any]]:
    argv = [str(BIN / "cicd"), "run", "pr-validation", "--repo", str(repo), "--ref", ref, "--json"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert result.stdout, result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout)


def jobs(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["name"]: job for job in report["jobs"]}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_pinned_linters_and_dependency_groups_as_the_project_runs_them(tmp_path: Path) -> None:
    repo = build_linted_repo(tmp_path)
    git(repo, "branch", "green")
    # The session's CICD_HOME holds the stores of other tests' repositories.
    other_stores = set(mypy_stores())

    for attempt in (1, 2):
        code, report = run_json(repo, "green")
        assert code == 0, f"run {attempt}: {report}"
        quality, unit = jobs(report)["quality"], jobs(report)["unit"]
        if attempt == 1:
            assert (quality["state"], unit["state"]) == ("passed", "passed")
            # The pinned versions ran, not the newest.
            assert quality["details"]["versions"] == {"mypy": "1.10.0", "ruff": "0.4.1"}
            steps = quality["details"]["commands"]
            assert set(steps) == {"ruff", "ruff_format", "mypy"}
            # mypy with its own `files`: no path of ours after it.
            assert steps["mypy"].endswith("-m mypy")
            assert unit["passed"] == 1
        else:
            assert (quality["state"], unit["state"]) == ("cached", "cached")

    # The green run published its mypy cache (tasks/tool_caches.py): the red
    # commits below are checked from it, and still fail.
    stores = sorted(set(mypy_stores()) - other_stores)
    assert len(stores) == 1 and any(stores[0].glob("3.*/*")), stores  # per Python version

    # A type error inside mypy's files fails quality on every run; the unit job passed
    # the first time, so the second serves it from the cache.
    git(repo, "checkout", "--quiet", "-b", "red-types")
    (repo / "src" / "linted" / "__init__.py").write_text(
        "def double(value: int) -> int:\n    return str(value * 2)\n"
    )
    commit_all(repo, "feat: a type error")
    for attempt in (1, 2):
        code, report = run_json(repo, "red-types")
        assert code == 1, f"run {attempt}: {report}"
        quality = jobs(report)["quality"]
        assert quality["state"] == "failed", f"run {attempt}"
        failed = [s["name"] for s in quality["steps"] if s["returncode"] != 0]
        assert failed == ["mypy"]

    # The error is in a file the commit leaves as it was, whose cached check
    # passed: mypy rechecks it because what it imports changed.
    git(repo, "checkout", "--quiet", "-B", "red-dependent", "main")
    (repo / "src" / "linted" / "__init__.py").write_text(
        "def double(value: int) -> str:\n    return str(value * 2)\n"
    )
    commit_all(repo, "feat: double returns a string")
    code, report = run_json(repo, "red-dependent")
    assert code == 1, report
    failed = [s["name"] for s in jobs(report)["quality"]["steps"] if s["returncode"] != 0]
    assert failed == ["mypy"]
    assert "src/linted/use.py:3: error: Incompatible types in assignment" in last_quality_log()
    # And green again once fixed, from the red run's cache.
    git(repo, "checkout", "--quiet", "-B", "fixed", "main")
    (repo / "src" / "linted" / "use.py").write_text(USE_OF_DOUBLE + "EIGHT: int = double(4)\n")
    commit_all(repo, "feat: eight")
    code, report = run_json(repo, "fixed")
    assert code == 0, report
    assert jobs(report)["quality"]["state"] == "passed"

    # Without the group that brings six, the test cannot import it: unit fails on
    # every run, while quality (same files, same pins) is served from the cache.
    git(repo, "checkout", "--quiet", "-B", "red-group", "main")
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(', {include-group = "helpers"}', ""))
    commit_all(repo, "build: drop the helpers group")
    for attempt in (1, 2):
        code, report = run_json(repo, "red-group")
        assert code == 1, f"run {attempt}: {report}"
        assert jobs(report)["unit"]["state"] == "failed", f"run {attempt}"
        assert jobs(report)["quality"]["state"] == ("passed" if attempt == 1 else "cached")


PRE_COMMIT_LOCAL = """\
repos:
  - repo: local
    hooks:
      - id: ruff
        name: ruff
        entry: ruff check
        language: python
        types: [python]
        additional_dependencies: [ruff==0.4.1]
"""


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_pre_commit_as_the_quality_step_fails_a_red_commit_on_every_run(tmp_path: Path) -> None:
    repo = build_linted_repo(tmp_path)
    (repo / ".pre-commit-config.yaml").write_text(PRE_COMMIT_LOCAL)
    (repo / "cicd.yaml").write_text(
        "quality: {pre_commit: true}\ntests: {unit: {paths: [tests]}}\n"
    )
    commit_all(repo, "ci: pre-commit is the quality step")

    for attempt in (1, 2):
        code, report = run_json(repo, "main")
        assert code == 0, f"run {attempt}: {report}"
        quality = jobs(report)["quality"]
        assert quality["state"] == ("passed" if attempt == 1 else "cached"), f"run {attempt}"
        if attempt == 1:
            assert [s["name"] for s in quality["steps"]] == ["pre-commit"]
            assert quality["details"]["commands"]["pre-commit"].endswith(
                "run --all-files --show-diff-on-failure --color never"
            )

    git(repo, "checkout", "--quiet", "-b", "red-hook")
    (repo / "src" / "linted" / "extra.py").write_text("import os\n")
    commit_all(repo, "feat: an unused import")
    for attempt in (1, 2):
        code, report = run_json(repo, "red-hook")
        assert code == 1, f"run {attempt}: {report}"
        quality = jobs(report)["quality"]
        assert quality["state"] == "failed", f"run {attempt}"
        assert quality["reason"] == "pre-commit (exit 1)"
        assert jobs(report)["unit"]["state"] == ("passed" if attempt == 1 else "cached")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_pyright_where_configured_at_the_groups_pin(tmp_path: Path) -> None:
    repo = build_linted_repo(tmp_path)
    (repo / ".pre-commit-config.yaml").unlink()
    pyproject = repo / "pyproject.toml"
    text = pyproject.read_text().replace(
        "[tool.mypy]", '[tool.pyright]\ninclude = ["src"]\n\n[tool.mypy]'
    )
    # The pins, in a dependency group no test installs (the newest ruff flags six.PY3).
    lint = 'lint = ["pyright==1.1.414", "ruff==0.4.1"]'
    pyproject.write_text(text.replace('helpers = ["six"]', f'helpers = ["six"]\n{lint}'))
    commit_all(repo, "ci: pyright")

    code, report = run_json(repo, "main")
    assert code == 0, report
    quality = jobs(report)["quality"]
    assert "pyright" in quality["details"]["commands"]
    assert quality["state"] == "passed"
    versions = quality["details"]["versions"]
    assert (versions["pyright"], versions["ruff"]) == ("1.1.414", "0.4.1")

    git(repo, "checkout", "--quiet", "-b", "red-pyright")
    (repo / "src" / "linted" / "wrong.py").write_text('count: int = "three"\n')
    commit_all(repo, "feat: a type error")
    for attempt in (1, 2):
        code, report = run_json(repo, "red-pyright")
        assert code == 1, f"run {attempt}: {report}"
        quality = jobs(report)["quality"]
        failed = {s["name"] for s in quality["steps"] if s["returncode"] != 0}
        assert quality["state"] == "failed" and failed == {"pyright", "mypy"}, f"run {attempt}"


FROZEN_PRE_COMMIT = """\
repos:
- repo: https://github.com/PyCQA/isort
  rev: 0a09c783808cfe77bb3269250f663ff733d23302  # frozen: 7.0.0
  hooks:
  - id: isort
- repo: https://github.com/pre-commit/mirrors-mypy
  rev: 'a66e98df7b4aeeb3724184b332785976d062b92e'  # frozen: v1.19.1
  hooks:
  - id: mypy
- repo: https://github.com/psf/black-pre-commit-mirror
  rev: 831207fd435b47aeffdf6af853097e64322b4d44
  hooks:
  - id: black
"""


def test_a_frozen_rev_is_pinned_at_the_tag_its_comment_names(tmp_path: Path) -> None:
    # `pre-commit autoupdate --freeze` (hukkin/tomli): the rev is a commit, its tag a
    # comment. Without the comment a commit pins nothing: the newest black.
    root = _project(tmp_path, pre_commit=FROZEN_PRE_COMMIT)

    wanted = tool_requirements(root, _toml(root), ["isort", "mypy", "black"])

    assert wanted == ["black", "isort==7.0.0", "mypy==1.19.1"]
