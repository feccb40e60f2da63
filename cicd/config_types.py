"""The field types of ``cicd.yaml`` (``cicd/config_schema.py`` builds the
sections from them): finite bounds, names, paths that stay inside the
repository, URLs, requirements and placeholders, each checked where it is
parsed so that a bad value names its field at load.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from cicd.config_loading import clipped, shown

PLACEHOLDER = re.compile(r"{(\w+)}")
MIN_SECONDS = 1.0
MAX_SECONDS = 24 * 3600.0
MAX_USD = 1_000_000.0


class _Model(BaseModel):
    # A typo in a field name must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _current_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _no_bool(value: Any) -> Any:
    # YAML's `true` is Python's True, and pydantic takes True for 1 (`version: true`).
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {shown(value)}")
    return value


def _matching(pattern: str, expected: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"expected {expected}, got {shown(value)}")
        return value

    return check


def _repo_path(value: str) -> str:
    """A path inside the repository, written relative to its root. Symlinks are
    resolved against the checkout by ``cicd.config.load_config``."""
    path = value.split("::", 1)[0]  # pytest node ids: tests/test_x.py::test_y
    if not path.strip():
        raise ValueError("expected a path inside the repository, got an empty string")
    if path.startswith("-"):
        raise ValueError(f"a path must not start with '-' (an option), got {shown(value)}")
    if path.startswith(("/", "~")) or PurePosixPath(path).is_absolute():
        raise ValueError(f"expected a path relative to the repository root, got {shown(value)}")
    if ".." in PurePosixPath(path).parts or "\\" in path:
        raise ValueError(f"a path must stay inside the repository (no '..'), got {shown(value)}")
    return value


def _arg_stays_inside(value: str) -> str:
    """Tool arguments are options by design, but never a path out of the
    repository: ``--rootdir=/``, ``../other``, ``/etc``."""
    target = value.split("=", 1)[1] if value.startswith("-") and "=" in value else value
    if target.startswith(("/", "~")) or ".." in PurePosixPath(target).parts:
        raise ValueError(f"an argument must not point outside the repository, got {shown(value)}")
    return value


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#@]+(:\d+)?([/?#]\S*)?", value):
        raise ValueError(f"expected an http:// or https:// URL, got {shown(value)}")
    return value


def _requirement(value: str) -> str:
    """A requirement (PEP 508), never an installer option (``--target=/elsewhere``)."""
    from packaging.requirements import InvalidRequirement, Requirement

    if value.lstrip().startswith("-"):
        raise ValueError(f"expected a requirement, not an option, got {shown(value)}")
    try:
        Requirement(value)
    except InvalidRequirement:
        raise ValueError(f"expected a requirement such as 'pkg>=1.2', got {shown(value)}") from None
    return value


Seconds = Annotated[
    float,
    BeforeValidator(_no_bool),
    Field(ge=MIN_SECONDS, le=MAX_SECONDS, allow_inf_nan=False),
]
Usd = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, le=MAX_USD, allow_inf_nan=False)]
PythonVersion = Annotated[str, AfterValidator(_matching(r"\d{1,2}\.\d{1,3}", "a version N.N"))]
# Prefect's own rule for block document names (prefect/types/names.py,
# https://github.com/PrefectHQ/prefect/blob/main/src/prefect/types/names.py).
BlockName = Annotated[
    str,
    Field(max_length=100),
    AfterValidator(_matching(r"[a-z0-9-]+", "a Prefect block name (a-z, 0-9, '-')")),
]
SlugOrBlockName = Annotated[
    str,
    Field(max_length=200),
    AfterValidator(
        _matching(r"([a-z0-9-]+/)?[a-z0-9-]+", "a Prefect block '<type-slug>/<name>' or '<name>'")
    ),
]
RepoPath = Annotated[str, Field(max_length=1024), AfterValidator(_repo_path)]
Argument = Annotated[str, Field(max_length=1024), AfterValidator(_arg_stays_inside)]
Url = Annotated[str, Field(max_length=2048), AfterValidator(_http_url)]
# Suite and service names become task names and file names (reports/<name>).
Name = Annotated[
    str,
    AfterValidator(
        _matching(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "a name of letters, digits, '_', '.', '-'")
    ),
]
EnvName = Annotated[
    str,
    AfterValidator(_matching(r"[A-Za-z_][A-Za-z0-9_]{0,127}", "an environment variable name")),
]
ExtraName = Annotated[
    str,
    AfterValidator(
        _matching(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?", "an extra name (PEP 685)")
    ),
]
Requirement = Annotated[str, Field(max_length=1024), AfterValidator(_requirement)]
IgnorePattern = Annotated[str, Field(min_length=1, max_length=256)]


def _placeholders_of(allowed: frozenset[str]) -> Callable[[dict[str, str]], dict[str, str]]:
    def check(export: dict[str, str]) -> dict[str, str]:
        for name, template in export.items():
            unknown = set(PLACEHOLDER.findall(template)) - allowed
            if unknown:
                raise ValueError(
                    f"{name}: unknown placeholder {{{clipped(sorted(unknown)[0], 30)}}}; "
                    f"expected one of {sorted(allowed)}"
                )
        return export

    return check
