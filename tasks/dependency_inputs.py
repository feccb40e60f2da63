"""What goes into the target's environment besides ``pyproject.toml``: its PEP 735
dependency groups and its requirements files, read as data.

Both can name the project under test itself (``-e .[test]`` in a requirements
file, ``dev = ["myproject[test]"]`` in a group). Installed as written, the
project would land in the *shared* environment, with an editable ``.pth``
pointing at a workspace that is deleted when its run ends. Such a reference is
turned into what it means for the environment, the project's dependencies with
those extras; the commit itself is put on the path per run (or built per run
with ``install_project``), as for every other target.

Pure functions: the texts they return are hashed into the environment key and
written out only when the environment is built.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from cicd.errors import BadInput

# Detected when present and cicd.yaml names none (issue 9): the names projects
# give their test dependencies.
DEFAULT_GROUPS = ("test", "tests", "testing", "dev")
MAX_REQUIREMENT_FILES = 50
# Where a translated line names a file of the workspace: replaced by the
# workspace's path when the files are written, so the key does not depend on it.
WORKSPACE_TOKEN = "@CICD_WORKSPACE@"
_INCLUDE_OPTIONS = {"-r": "-r", "--requirement": "-r", "-c": "-c", "--constraint": "-c"}
_EDITABLE_OPTIONS = ("-e", "--editable")
# `.`, `./`, `.[a,b]`, `./[a]`, `file:.`: the directory of the file, with extras.
_LOCAL = re.compile(
    r"(?:file:)?(?P<path>\.{1,2}(?:/[^\[\s]*)?|/[^\[\s]*)(?:\[(?P<extras>[^\]]*)\])?"
)


class GroupCycle(BadInput):
    """A dependency group includes itself (PEP 735 makes this an error)."""


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_groups(pyproject: dict[str, Any]) -> dict[str, list[Any]]:
    """``[dependency-groups]`` by normalized name (PEP 735: names compare like PEP 503)."""
    table = pyproject.get("dependency-groups", {})
    if not isinstance(table, dict):
        raise BadInput("pyproject.toml: [dependency-groups] must be a table")
    groups: dict[str, list[Any]] = {}
    for name, entries in table.items():
        if not isinstance(entries, list):
            raise BadInput(f"pyproject.toml: dependency group {name!r} must be a list")
        if _normalized(name) in groups:
            raise BadInput(f"pyproject.toml: dependency group {name!r} is defined twice")
        groups[_normalized(name)] = entries
    return groups


def resolve_group(groups: dict[str, list[Any]], name: str) -> list[str]:
    """The requirements of group ``name``, ``{include-group = ...}`` expanded.

    As the PEP's reference implementation
    (https://peps.python.org/pep-0735/#reference-implementation): depth first,
    in order, a cycle is an error naming the group that closes it.
    """

    def expand(group: str, trail: tuple[str, ...]) -> list[str]:
        if group in trail:
            cycle = " -> ".join([*trail[trail.index(group) :], group])
            raise GroupCycle(
                f"pyproject.toml: dependency group {group!r} includes itself ({cycle})"
            )
        if group not in groups:
            raise BadInput(f"pyproject.toml: dependency group {group!r} is not defined")
        found: list[str] = []
        for entry in groups[group]:
            if isinstance(entry, str):
                try:
                    Requirement(entry)
                except InvalidRequirement:
                    raise BadInput(
                        f"pyproject.toml: dependency group {group!r}: {entry!r} is not a "
                        "requirement (PEP 508)"
                    ) from None
                found.append(entry)
            elif isinstance(entry, dict) and set(entry) == {"include-group"}:
                found += expand(_normalized(str(entry["include-group"])), (*trail, group))
            else:
                raise BadInput(
                    f"pyproject.toml: dependency group {group!r}: unknown entry {entry!r}"
                )
        return found

    return expand(_normalized(name), ())


def selected_groups(configured: list[str] | None, pyproject: dict[str, Any]) -> list[str]:
    """The groups to install: the configured ones, else those of DEFAULT_GROUPS present."""
    if configured is not None:
        return list(configured)
    present = dependency_groups(pyproject)
    return [name for name in DEFAULT_GROUPS if name in present]


@dataclass
class DependencyInputs:
    """The environment's inputs beyond ``pyproject.toml``, as the installer gets them."""

    # PEP 508 strings from the groups, the project's own references taken out.
    requirements: list[str] = field(default_factory=list)
    # Extras of the project that its references asked for.
    extras: set[str] = field(default_factory=set)
    # Translated requirements files: path relative to the workspace -> text.
    files: dict[str, str] = field(default_factory=dict)
    # The top-level files (handed to the installer with -r), relative paths.
    top: list[str] = field(default_factory=list)

    def write(self, directory: Path, workspace: Path) -> list[Path]:
        """The translated files under ``directory`` (a mirror of their relative paths)."""
        for relative, text in self.files.items():
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text.replace(WORKSPACE_TOKEN, str(workspace)))
        return [directory / relative for relative in self.top]


def project_name(pyproject: dict[str, Any]) -> str | None:
    project = pyproject.get("project", {})
    name = project.get("name") if isinstance(project, dict) else None
    return canonicalize_name(name) if isinstance(name, str) else None


def group_inputs(pyproject: dict[str, Any], groups: list[str], inputs: DependencyInputs) -> None:
    """Add the groups' requirements; one naming the project adds its extras instead."""
    table = dependency_groups(pyproject)
    own = project_name(pyproject)
    for name in groups:
        for entry in resolve_group(table, name):
            requirement = Requirement(entry)
            if (
                own is not None
                and canonicalize_name(requirement.name) == own
                and not (requirement.url)
            ):
                inputs.extras |= requirement.extras
            else:
                inputs.requirements.append(entry)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with ``\\`` continuations joined and comments removed, as pip reads them
    (https://pip.pypa.io/en/stable/reference/requirements-file-format/)."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = re.sub(r"(^|\s+)#.*$", "", pending + raw).strip()
        pending = ""
        if line:
            lines.append((start, line))
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines


def _inside(workspace: Path, path: Path) -> bool:
    resolved = path.resolve()
    return resolved == workspace or resolved.is_relative_to(workspace)


def requirements_inputs(workspace: Path, inputs: DependencyInputs) -> None:
    """Translate ``requirements*.txt`` at the root and the files they include."""
    root = workspace.resolve()
    todo = [p.name for p in sorted(root.glob("requirements*.txt")) if p.is_file()]
    inputs.top += todo
    while todo:
        relative = todo.pop(0)
        if relative in inputs.files:
            continue
        if len(inputs.files) >= MAX_REQUIREMENT_FILES:
            raise BadInput(f"{relative}: more than {MAX_REQUIREMENT_FILES} requirements files")
        path = root / relative
        if not _inside(root, path) or not path.is_file():
            raise BadInput(f"{relative}: not a file inside the repository")
        out: list[str] = []
        for number, line in _logical_lines(path.read_text(encoding="utf-8")):
            where = f"{relative} line {number}"
            translated = _translate_line(root, PurePosixPath(relative).parent, line, where, inputs)
            if translated is None:
                continue
            if translated.startswith(("-r ", "-c ")):
                todo.append(translated[3:])
            out.append(translated)
        inputs.files[relative] = "".join(f"{line}\n" for line in out)


def _translate_line(
    root: Path, here: PurePosixPath, line: str, where: str, inputs: DependencyInputs
) -> str | None:
    """One logical line as the installer gets it; None when it names the project."""
    try:
        words = shlex.split(line)
    except ValueError:
        raise BadInput(f"{where}: cannot be parsed: {line!r}") from None
    option, _, value = words[0].partition("=")
    if option in _INCLUDE_OPTIONS:
        target = value or (words[1] if len(words) > 1 else "")
        included = PurePosixPath(here, target)
        if not target or target.startswith("/") or not _inside(root, root / included):
            raise BadInput(f"{where}: {line!r} must name a file inside the repository")
        return f"{_INCLUDE_OPTIONS[option]} {PurePosixPath(*included.parts)}"
    editable = option in _EDITABLE_OPTIONS
    if editable:
        value = value or (words[1] if len(words) > 1 else "")
    elif not line.startswith("-"):
        value = line
    else:
        return line  # other options (--index-url, --hash, ...) as written
    local = _LOCAL.fullmatch(value)
    if local is None:
        return line  # a requirement, a URL, a VCS checkout: nothing of the workspace
    # pip reads a local path relative to where it runs: the workspace's root.
    path = (
        Path(local.group("path"))
        if local.group("path").startswith("/")
        else root / local.group("path")
    )
    if path.resolve() == root:
        extras = local.group("extras") or ""
        inputs.extras |= {e.strip() for e in extras.split(",") if e.strip()}
        return None
    if not _inside(root, path):
        return line  # outside the workspace: the worker's own files, not ours to judge
    if editable or not path.is_file():
        raise BadInput(
            f"{where}: {line!r} would install a directory of the repository into the shared "
            "environment, which outlives this commit; list its dependencies instead"
        )
    relative = path.resolve().relative_to(root)
    extras = f"[{local.group('extras')}]" if local.group("extras") else ""
    # A wheel of the repository: its content decides the environment too.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{WORKSPACE_TOKEN}/{relative}{extras}  # sha256 {digest}"
