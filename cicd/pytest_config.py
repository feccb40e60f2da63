"""Where pytest reads its configuration, found the way pytest finds it.

pytest looks in the directory of its arguments (the workspace root, as we run
it without paths) and upwards, and in each directory takes the first of
``pytest.ini``, ``.pytest.ini``, ``pyproject.toml``, ``tox.ini``, ``setup.cfg``
that holds pytest settings: ``pytest.ini`` always (even empty), a
``pyproject.toml`` with ``[tool.pytest.ini_options]`` or, since pytest 9, a
native ``[tool.pytest]`` table, a ``tox.ini`` with ``[pytest]``, a
``setup.cfg`` with ``[tool:pytest]``
(https://docs.pytest.org/en/stable/reference/customize.html#finding-the-rootdir).
We search the checkout only: a directory above it is not the project's.

Only what the pipeline needs is read: which file, and its ``testpaths``
(whitespace-separated in an ini file, a list in TOML,
https://docs.pytest.org/en/stable/reference/reference.html#confval-testpaths).
pytest itself still reads the file when it runs; we never pass a path that
would override it unless cicd.yaml names one.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cicd.config_loading import clipped, read_text, read_toml
from cicd.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024
# In this order within one directory (pytest's _pytest/config/findpaths.py).
CANDIDATES = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


@dataclass(frozen=True)
class PytestConfig:
    """The file pytest will use in the checkout (None: none) and its testpaths."""

    inifile: str | None = None
    testpaths: tuple[str, ...] = ()

    def describe(self) -> str:
        """Where pytest looks for tests, for messages."""
        if self.testpaths:
            return f"testpaths {' '.join(self.testpaths)} ({self.inifile})"
        where = f"rootdir, {self.inifile}" if self.inifile else "rootdir, no pytest configuration"
        return f"the repository ({where})"


def _ini_sections(path: Path, name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(read_text(path, name, MAX_CONFIG_BYTES))
    except configparser.Error as exc:
        raise ConfigError(name, [f"not a valid ini file ({clipped(str(exc), 100)})"]) from None
    return parser


def _ini_testpaths(parser: configparser.ConfigParser, section: str) -> tuple[str, ...]:
    return tuple(parser.get(section, "testpaths", fallback="").split())


def _toml_testpaths(table: dict[str, Any]) -> tuple[str, ...]:
    value = table.get("testpaths", ())
    if isinstance(value, str):
        return tuple(value.split())
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _read(path: Path, name: str) -> PytestConfig | None:
    """The file's pytest settings, or None when pytest would pass it over."""
    if name in {"pytest.ini", ".pytest.ini"}:
        parser = _ini_sections(path, name)
        testpaths = _ini_testpaths(parser, "pytest") if parser.has_section("pytest") else ()
        return PytestConfig(name, testpaths)
    if name == "pyproject.toml":
        data = read_toml(path, name, MAX_CONFIG_BYTES)
        tool = data.get("tool", {})
        pytest = tool.get("pytest") if isinstance(tool, dict) else None
        if not isinstance(pytest, dict):
            return None
        ini_options = pytest.get("ini_options")
        # pytest 9 reads the native table; older ones only ini_options.
        table = ini_options if isinstance(ini_options, dict) else pytest
        return PytestConfig(name, _toml_testpaths(table))
    section = "pytest" if name == "tox.ini" else "tool:pytest"
    parser = _ini_sections(path, name)
    if not parser.has_section(section):
        return None
    return PytestConfig(name, _ini_testpaths(parser, section))


def find_pytest_config(root: Path) -> PytestConfig:
    """pytest's configuration of the checkout at ``root``, first match wins."""
    for name in CANDIDATES:
        path = root / name
        if path.is_file():
            found = _read(path, name)
            if found is not None:
                return found
    return PytestConfig()
