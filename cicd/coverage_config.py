"""Which coverage.py configuration the target has, found by coverage's own rules.

coverage.py itself reads the file when the test job runs ``coverage run``
(from the checkout, so its ``source``, ``include``, ``omit``, ``[paths]`` and
``fail_under`` all apply). We read it only to know three things beforehand:
that the project configures coverage at all (then the default suite measures
with that configuration instead of our guess of its sources), its
``fail_under`` and ``precision`` (to word the reason when coverage says the
total is under the bar).

The first file that is used wins (coverage/config.py ``config_files_to_try``,
https://coverage.readthedocs.io/en/latest/config.html): ``.coveragerc`` and
``.coveragerc.toml`` whenever they exist (sections ``[run]`` or
``[coverage:run]``), then ``setup.cfg`` and ``tox.ini`` with a
``[coverage:...]`` section, then ``pyproject.toml`` with ``[tool.coverage...]``.
``COVERAGE_RCFILE`` of the worker is not the project's and is not read.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cicd.config_loading import clipped, read_text, read_toml
from cicd.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024
# (file, only for coverage, TOML)
CANDIDATES = (
    (".coveragerc", True, False),
    (".coveragerc.toml", True, True),
    ("setup.cfg", False, False),
    ("tox.ini", False, False),
    ("pyproject.toml", False, True),
)


@dataclass(frozen=True)
class CoverageSettings:
    """The settings of the file coverage.py will use (``file`` None: none)."""

    file: str | None = None
    fail_under: float | None = None
    precision: int = 0


def _number(value: Any, name: str, option: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(name, [f"coverage option {option}: not a number ({value!r})"]) from None


def _ini_report(path: Path, name: str, ours: bool) -> dict[str, Any] | None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(read_text(path, name, MAX_CONFIG_BYTES))
    except configparser.Error as exc:
        raise ConfigError(name, [f"not a valid ini file ({clipped(str(exc), 100)})"]) from None
    prefixes = ["coverage:", ""] if ours else ["coverage:"]
    sections = [s for s in parser.sections() if any(s.startswith(p) for p in prefixes if p) or ours]
    if not sections and not ours:
        return None
    for prefix in prefixes:
        if parser.has_section(f"{prefix}report"):
            return dict(parser.items(f"{prefix}report"))
    return {}


def _toml_report(path: Path, name: str, ours: bool) -> dict[str, Any] | None:
    data = read_toml(path, name, MAX_CONFIG_BYTES)
    tool = data.get("tool", {})
    coverage = tool.get("coverage") if isinstance(tool, dict) else None
    if not isinstance(coverage, dict):
        if not ours:
            return None
        coverage = data
    report = coverage.get("report", {})
    return report if isinstance(report, dict) else {}


def find_coverage_settings(root: Path) -> CoverageSettings:
    """The coverage.py settings of the checkout at ``root``."""
    for name, ours, is_toml in CANDIDATES:
        path = root / name
        if not path.is_file():
            continue
        report = (_toml_report if is_toml else _ini_report)(path, name, ours)
        if report is None:
            continue
        precision = _number(report.get("precision"), name, "report:precision")
        return CoverageSettings(
            file=name,
            fail_under=_number(report.get("fail_under"), name, "report:fail_under"),
            precision=int(precision or 0),
        )
    return CoverageSettings()
