"""The target project's pipeline configuration: ``cicd.yaml`` at the repo root.

``load_config(workspace)`` is the one way in: it reads the file of the commit
under test within bounds (``cicd.config_loading``), validates every field
(``cicd.config_schema``), resolves every path it names inside the checkout
(after symlinks) and refuses a configuration that runs no job. Every problem is
a ``ConfigError`` naming the file and the field (exit 2). With no file, defaults
are detected from the target's ``pyproject.toml``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cicd.config_loading import (
    MAX_NODES,
    MAX_STRING_CHARS,
    bounded_problems,
    check_strings,
    clipped,
    dotted,
    load_yaml,
    read_text,
    read_toml,
    shown,
)
from cicd.config_schema import (
    DEFAULT_LLM_EXPORT,
    DEFAULT_NEO4J_EXPORT,
    LLM_PLACEHOLDERS,
    SERVICE_PLACEHOLDERS,
    BenchmarkConfig,
    EnvironmentConfig,
    LlmConfig,
    LlmMode,
    NotifyConfig,
    PipelineConfig,
    PipelineName,
    PipelineSettings,
    QualityConfig,
    ReleaseConfig,
    ServiceConfig,
    StatusesConfig,
    SuiteConfig,
    ToolConfig,
)
from cicd.config_types import PLACEHOLDER
from cicd.coverage_config import find_coverage_settings
from cicd.errors import ConfigError
from cicd.pytest_config import find_pytest_config
from cicd.quality_detection import PRE_COMMIT_CONFIG, detected_tools, mypy_config
from cicd.unittest_detection import is_unittest_suite

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_LLM_EXPORT",
    "DEFAULT_NEO4J_EXPORT",
    "LLM_PLACEHOLDERS",
    "SERVICE_PLACEHOLDERS",
    "BenchmarkConfig",
    "EnvironmentConfig",
    "LlmConfig",
    "LlmMode",
    "NotifyConfig",
    "PipelineConfig",
    "PipelineName",
    "PipelineSettings",
    "QualityConfig",
    "ReleaseConfig",
    "ServiceConfig",
    "StatusesConfig",
    "SuiteConfig",
    "ToolConfig",
    "detect_defaults",
    "load_config",
    "load_config_file",
    "load_yaml",
    "parse_config",
    "render_template",
]

CONFIG_FILE = "cicd.yaml"
PYPROJECT = "pyproject.toml"
MAX_PYPROJECT_BYTES = 1024 * 1024
# Files the environment step hands to uv: a symlink out of the repository
# would make it read any file of the worker (uv read /etc/os-release).
DEPENDENCY_FILES = (PYPROJECT, "setup.py", "setup.cfg")


# pydantic names the member of a union in the location (`coverage.bool`,
# `coverage.list[...]`); a user wrote `coverage`, so the tags are dropped, and
# the branch of a `bool | list` field that the value plainly was not meant for
# (a list given to `bool`) is not reported at all.
_UNION_TAG = re.compile(r"(bool|int|float|str|list|dict|none)(\[.*\])?|function-\w+\[.*")


def _format_errors(errors: list[Any]) -> list[str]:
    kept = [
        e
        for e in errors
        if not ("bool" in e["loc"] and e["type"].startswith("bool") and len(errors) > 1)
    ]
    return [_format_error(e) for e in kept]


def _format_error(error: Any) -> str:
    """One pydantic error as ``field 'a.b': message (got value)``, bounded."""
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and _UNION_TAG.fullmatch(p)))
    location = dotted(loc)
    message = clipped(str(error["msg"]).removeprefix("Value error, "), 120)
    if error["type"] == "extra_forbidden":
        return f"field '{location}': unknown field"
    if error["type"] == "value_error":
        # Our own validators already name the value (and, at the top, the field).
        return message if message.startswith("field '") else f"field '{location}': {message}"
    got = error.get("input")
    shown_got = "" if isinstance(got, dict | list) else f" (got {shown(got)})"
    return f"field '{location}': {message}{shown_got}"


def parse_config(text: str, source: str = CONFIG_FILE) -> PipelineConfig:
    """Validate the text of a ``cicd.yaml``; errors name ``source`` and the field."""
    data = load_yaml(text, source, max_values=MAX_NODES, max_chars=MAX_STRING_CHARS)
    if data is None:
        raise ConfigError(
            source, ["the file is empty: it configures no job (add 'tests' or 'quality')"]
        )
    if not isinstance(data, dict):
        raise ConfigError(
            source, [f"expected a mapping at the top level, got {type(data).__name__}"]
        )
    check_strings(data, source)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = _format_errors(exc.errors(include_url=False))
        raise ConfigError(source, bounded_problems(problems)) from None


def read_pyproject(root: Path) -> dict[str, Any]:
    """``root``'s pyproject.toml, bounded; {} when there is none."""
    path = root / PYPROJECT
    return read_toml(path, PYPROJECT, MAX_PYPROJECT_BYTES) if path.is_file() else {}


def _package_dirs(root: Path) -> list[str]:
    """Where the target's import packages live: ``src/<pkg>`` or ``<pkg>`` at the root."""
    src = root / "src"
    base = src if src.is_dir() else root
    found = (
        [
            p
            for p in sorted(base.iterdir())
            if p.is_dir() and (p / "__init__.py").is_file() and p.name not in {"tests", "test"}
        ]
        if base.is_dir()
        else []
    )
    return [str(p.relative_to(root)) for p in found]


# Not searched for test files: pytest's own default norecursedirs and the like
# (https://docs.pytest.org/en/stable/reference/reference.html#confval-norecursedirs).
_NOT_SEARCHED = frozenset({"build", "dist", "node_modules", "venv", "__pycache__", "site-packages"})


def _collected_by_default(name: str) -> bool:
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def _has_tests(root: Path) -> bool:
    """pytest is configured, there is a tests directory, or a file pytest would
    collect by default (``test_*.py``, ``*_test.py``): the project has tests."""
    if any((root / name).is_dir() for name in ("tests", "test", "testing")):
        return True
    try:
        if find_pytest_config(root).inifile is not None:
            return True
    except ConfigError:
        return True  # pytest will say what is wrong with it
    for _dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _NOT_SEARCHED]
        if any(_collected_by_default(name) for name in filenames):
            return True
    return False


def detect_defaults(root: Path) -> PipelineConfig:
    """Sensible defaults for a target without ``cicd.yaml``, from ``pyproject.toml``."""
    pyproject = read_pyproject(root)
    project = pyproject.get("project", {})
    optional = project.get("optional-dependencies", {}) if isinstance(project, dict) else {}
    extras = [name for name in ("dev", "test", "tests") if name in optional][:1]
    packages = _package_dirs(root)

    # Each linter the project configures (its own files) or runs as a pre-commit
    # hook, with no path that would override its own configuration; mypy without
    # `files` gets the packages.
    quality: dict[str, Any] = {name: {} for name in sorted(detected_tools(root, pyproject))}
    if "mypy" in quality and "files" not in (mypy_config(root, pyproject) or {}):
        if packages:
            quality["mypy"] = {"paths": packages}
        else:
            del quality["mypy"]
    # A suite with no path: pytest's own configuration (testpaths in
    # pytest.ini, pyproject.toml, tox.ini or setup.cfg; else the rootdir)
    # decides what it collects, and a suite that collects nothing fails. The
    # project's coverage.py configuration, where it has one, decides what is
    # measured; else its packages are.
    tests: dict[str, Any] = {}
    if _has_tests(root):
        has_coverage_config = find_coverage_settings(root).file is not None
        tests["unit"] = {"coverage": True if has_coverage_config else packages}
        # A plain unittest suite runs as its CI runs it (cicd/unittest_detection.py).
        if is_unittest_suite(root, pyproject):
            tests["unit"]["runner"] = "unittest"
    try:
        return PipelineConfig.model_validate(
            {"environment": {"extras": extras}, "quality": quality, "tests": tests}
        )
    except ValidationError as exc:
        problems = _format_errors(exc.errors(include_url=False))
        raise ConfigError(f"{PYPROJECT} (no {CONFIG_FILE})", bounded_problems(problems)) from None


def _inside(root: Path, relative: str) -> bool:
    """``root/relative`` stays inside ``root`` once every symlink is followed."""
    try:
        resolved = (root / relative).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return resolved == root or resolved.is_relative_to(root)


def _repository_file(root: Path, name: str) -> Path | None:
    """``root/name`` if it exists; refused when it is a symlink out of the repository."""
    path = root / name
    if not path.is_symlink():
        return path if path.exists() else None
    if not _inside(root, name):
        raise ConfigError(name, ["a symlink to outside the repository: refused"])
    if not path.exists():
        raise ConfigError(name, ["a symlink to a file that does not exist"])
    return path


def _path_fields(config: PipelineConfig) -> Iterator[tuple[str, str]]:
    """Every path a ``cicd.yaml`` names, with the field that names it."""
    for tool_name, tool in config.quality.tools().items():
        for i, path in enumerate(tool.paths):
            yield f"quality.{tool_name}.paths[{i}]", path
        for i, arg in enumerate(tool.args):
            if not arg.startswith("-"):
                yield f"quality.{tool_name}.args[{i}]", arg
    for name, suite in config.tests.items():
        for i, path in enumerate(suite.paths):
            yield f"tests.{name}.paths[{i}]", path.split("::", 1)[0]
        for i, path in enumerate(suite.coverage_sources):
            yield f"tests.{name}.coverage[{i}]", path
        for i, arg in enumerate(suite.args):
            if not arg.startswith("-"):
                yield f"tests.{name}.args[{i}]", arg.split("::", 1)[0]
    if config.benchmarks is not None:
        for i, path in enumerate(config.benchmarks.paths):
            yield f"benchmarks.paths[{i}]", path
        yield "benchmarks.baseline", config.benchmarks.baseline
    if config.llm.fixtures is not None:
        yield "llm.fixtures", config.llm.fixtures
    yield "llm.recordings", config.llm.recordings


def _check_workspace(root: Path, config: PipelineConfig, source: str) -> None:
    problems = [
        f"field '{field}': {shown(value)} leads out of the repository (symlink): refused"
        for field, value in _path_fields(config)
        if not _inside(root, value)
    ]
    fixtures = config.llm.fixtures
    if fixtures is not None and not problems and not (root / fixtures).is_dir():
        problems.append(
            f"field 'llm.fixtures': directory {shown(fixtures)} does not exist in the repository"
        )
    if config.environment.extras and not (root / PYPROJECT).is_file():
        problems.append(
            f"field 'environment.extras': {shown(config.environment.extras)} needs a "
            f"{PYPROJECT} in the repository"
        )
    groups = config.environment.groups or []
    declared = read_pyproject(root).get("dependency-groups", {}) if groups else {}
    known = {re.sub(r"[-_.]+", "-", str(name)).lower() for name in declared}
    for group in groups:
        if re.sub(r"[-_.]+", "-", group).lower() not in known:
            problems.append(
                f"field 'environment.groups': group {shown(group)} is not in {PYPROJECT} "
                f"[dependency-groups] (it has {sorted(known) or 'none'})"
            )
    if config.quality.pre_commit and not (root / PRE_COMMIT_CONFIG).is_file():
        problems.append(
            f"field 'quality.pre_commit': needs a {PRE_COMMIT_CONFIG} in the repository"
        )
    if config.quality.pre_commit and config.quality.tools():
        problems.append(
            "field 'quality.pre_commit': runs the hooks instead of "
            f"{', '.join(config.quality.tools())}; configure one or the other"
        )
    if (
        not config.quality.tools()
        and not config.quality.pre_commit
        and not config.tests
        and config.deploy is None
    ):
        problems.append(
            "configures no job: no quality tool and no test suite (add 'quality' or 'tests')"
        )
    if problems:
        raise ConfigError(source, bounded_problems(problems))


def load_config(workspace: Path) -> PipelineConfig:
    """The configuration of the checked-out commit at ``workspace``: read within
    bounds, validated, every path inside the workspace, at least one job."""
    root = workspace.resolve()
    for name in DEPENDENCY_FILES:
        _repository_file(root, name)
    for requirements in sorted(root.glob("requirements*.txt")):
        _repository_file(root, requirements.name)
    # The files quality detection reads on the worker (cicd.quality_detection).
    for name in (PRE_COMMIT_CONFIG, "mypy.ini", ".mypy.ini", "ruff.toml", ".ruff.toml", "tox.ini"):
        _repository_file(root, name)
    path = _repository_file(root, CONFIG_FILE)
    if path is not None:
        config = parse_config(read_text(path, CONFIG_FILE), CONFIG_FILE)
        source = CONFIG_FILE
    else:
        config = detect_defaults(root)
        source = f"{PYPROJECT} (no {CONFIG_FILE})"
    _check_workspace(root, config, source)
    return config


def load_config_file(path: Path) -> PipelineConfig:
    """A ``cicd.yaml`` outside any checkout (the cost report's thresholds): read
    and validated like the repository's, without the workspace checks."""
    return parse_config(read_text(path, str(path)), str(path))


def render_template(template: str, values: dict[str, str]) -> str:
    """Fill ``{name}`` placeholders (used for the env names a service exports)."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
