"""Whether a project's tests are a plain unittest suite, run as its CI runs them.

A project whose CI runs ``python -m unittest`` (hukkin/tomli's
``coverage run -m unittest``) pays about a second of pytest's start-up and
collection when the test job runs pytest instead, for a suite that takes a
quarter of a second (issue 15 item 4). The default suite of such a project
runs unittest (``runner: unittest``, ``tasks/unittest_junit.py``), but only
when unittest finds exactly what pytest would, so nothing the project means to
run is left out:

- pytest is not configured (no ``pytest.ini``, ``[tool.pytest.ini_options]``,
  ``[pytest]``, ``[tool:pytest]``) and is no requirement of an extra or a
  dependency group, and no ``conftest.py`` exists;
- every file pytest collects by default (``test_*.py``, ``*_test.py``) is one
  unittest's discovery finds: named ``test*.py`` (its default pattern), in a
  package all the way from the root (discovery enters only packages,
  https://docs.python.org/3/library/unittest.html#test-discovery);
- none imports pytest or defines a module-level ``test*`` function (pytest
  collects those, unittest does not), and one at least defines a class.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

from cicd.errors import ConfigError
from cicd.pytest_config import find_pytest_config

# Not searched, as pytest's default norecursedirs (cicd/config.py has the same).
NOT_SEARCHED = frozenset({"build", "dist", "node_modules", "venv", "__pycache__", "site-packages"})
# A test module larger than this is not read: pytest then, the safe default.
MAX_TEST_FILE_BYTES = 2 * 1024 * 1024
PYTEST_REQUIREMENT = re.compile(r"^\s*pytest(?![\w.-])", re.IGNORECASE)


def _requires_pytest(pyproject: dict[str, Any]) -> bool:
    project = pyproject.get("project", {})
    tables = [
        project.get("optional-dependencies", {}) if isinstance(project, dict) else {},
        pyproject.get("dependency-groups", {}),
    ]
    return any(
        isinstance(entry, str) and PYTEST_REQUIREMENT.match(entry)
        for table in tables
        if isinstance(table, dict)
        for entries in table.values()
        if isinstance(entries, list)
        for entry in entries
    )


def _test_files(root: Path) -> list[Path] | None:
    """The files pytest would collect by default; None when there is a conftest.py."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in NOT_SEARCHED)
        if "conftest.py" in filenames:
            return None
        for name in sorted(filenames):
            if name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py")):
                found.append(Path(dirpath) / name)
    return found


def _in_packages(root: Path, path: Path) -> bool:
    """Every directory from ``root`` (excluded) down to ``path`` is a package."""
    parent = path.parent
    while parent != root:
        if not (parent / "__init__.py").is_file():
            return False
        parent = parent.parent
    return True


def _plain_unittest_module(path: Path) -> bool | None:
    """False when pytest would see more in it than unittest; None when it has no
    class (nothing for unittest to run); True otherwise."""
    try:
        if path.stat().st_size > MAX_TEST_FILE_BYTES:
            return False
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return False  # pytest reports what is wrong with it
    has_class = False
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            has_class = True
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(
            "test"
        ):
            return False
    for found in ast.walk(tree):
        if isinstance(found, ast.Import):
            modules = [alias.name for alias in found.names]
        elif isinstance(found, ast.ImportFrom):
            modules = [found.module or ""]
        else:
            continue
        if any(module.split(".")[0] in ("pytest", "_pytest") for module in modules):
            return False
    return True if has_class else None


def is_unittest_suite(root: Path, pyproject: dict[str, Any]) -> bool:
    """True when the checkout at ``root`` is a plain unittest suite (module docstring)."""
    try:
        if find_pytest_config(root).inifile is not None:
            return False
    except ConfigError:
        return False  # pytest will say what is wrong with its file
    if _requires_pytest(pyproject):
        return False
    files = _test_files(root)
    if not files:
        return False
    verdicts = []
    for path in files:
        if not path.name.startswith("test") or not _in_packages(root, path):
            return False
        verdict = _plain_unittest_module(path)
        if verdict is False:
            return False
        verdicts.append(verdict)
    return any(verdicts)
