"""The benchmark baseline: pytest-benchmark JSON parsed into per-benchmark
statistics, and the baseline file stored in the target's repository.

Baseline file format (version 1, JSON, stored in the target repo)
------------------------------------------------------------------
::

    {
      "version": 1,
      "created": "2026-01-01T00:00:00+00:00",
      "rounds": 5,
      "statistic": "per-round median, seconds",
      "machine": {"python": "3.11.7", "platform": "Linux-...", "cpu_count": 2},
      "benchmarks": {
        "tests/performance/test_x.py::test_query": {
          "name": "test_query",
          "round_medians": [0.0012, 0.00121, ...],
          "min": 0.0012, "median": 0.00121
        }
      }
    }

Only ``round_medians`` is used for comparison; ``min``/``median`` are there for
people reading the diff. A raw pytest-benchmark JSON is also accepted as a
one-round baseline (what seed 003 stored), with the weaker rule above.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cicd.errors import BadInput, CicdError, ConfigError

BASELINE_VERSION = 1


class BenchmarkError(CicdError):
    """The benchmark suite itself failed: a test error, a crash, a timeout."""


@dataclass(frozen=True)
class Stats:
    """One benchmark's statistics from one pytest-benchmark run, in seconds."""

    name: str
    fullname: str
    min: float
    max: float
    mean: float
    median: float
    stddev: float
    rounds: int
    data: tuple[float, ...] | None = None

    @property
    def center(self) -> float:
        """The figure of this run: the median of the raw samples when present."""
        if self.data:
            return statistics.median(self.data)
        return self.median


@dataclass(frozen=True)
class Baseline:
    path: str
    benchmarks: dict[str, tuple[float, ...]]
    names: dict[str, str] = field(default_factory=dict)
    created: str | None = None

    def figure(self, key: str) -> float:
        return min(self.benchmarks[key])


# --------------------------------------------------------------------------- parsing


def _number(value: Any, where: str, problems: list[str], *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.append(f"{where}: expected a number, got {value!r}")
        return math.nan
    if positive and value <= 0:
        problems.append(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path}: file not found") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), [f"not valid JSON (line {exc.lineno}: {exc.msg})"]) from None


def parse_benchmark_json(source: Path | str | Mapping[str, Any]) -> dict[str, Stats]:
    """The benchmarks of one pytest-benchmark JSON file (or its loaded data),
    keyed by ``fullname`` (``path::test[param]``), falling back to ``name``."""
    if isinstance(source, Mapping):
        label, data = "<benchmark data>", source
    else:
        label, data = str(source), _read_json(Path(source))
    if not isinstance(data, Mapping) or not isinstance(data.get("benchmarks"), list):
        raise ConfigError(label, ["expected pytest-benchmark JSON with a 'benchmarks' list"])
    problems: list[str] = []
    found: dict[str, Stats] = {}
    for index, entry in enumerate(data["benchmarks"]):
        where = f"benchmarks[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: expected an object")
            continue
        name = entry.get("name")
        fullname = entry.get("fullname") or name
        stats = entry.get("stats")
        if not isinstance(name, str) or not isinstance(fullname, str):
            problems.append(f"{where}.name: expected a string, got {name!r}")
            continue
        if not isinstance(stats, Mapping):
            problems.append(f"{where}.stats: missing")
            continue
        values = {
            key: _number(stats.get(key), f"{where}.stats.{key}", problems)
            for key in ("min", "max", "mean", "median", "stddev")
        }
        rounds = stats.get("rounds", 0)
        raw = stats.get("data")
        data_values: tuple[float, ...] | None = None
        if raw is not None:
            if not isinstance(raw, list) or not raw:
                problems.append(f"{where}.stats.data: expected a non-empty list of numbers")
            else:
                data_values = tuple(
                    _number(v, f"{where}.stats.data[{i}]", problems) for i, v in enumerate(raw)
                )
        if fullname in found:
            problems.append(f"{where}: duplicate benchmark {fullname!r}")
            continue
        found[fullname] = Stats(
            name=name,
            fullname=fullname,
            rounds=int(rounds) if isinstance(rounds, int) else 0,
            data=data_values,
            **values,
        )
    if problems:
        raise ConfigError(label, problems[:10])
    return found


def load_baseline(path: Path | str) -> Baseline:
    """Read a baseline file; a missing or corrupt baseline is an error, never a pass."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(
            f"benchmark baseline {path} not found: record one on a quiet machine with the "
            "baseline-update command and commit it (a missing baseline is not a pass)"
        )
    data = _read_json(path)
    label = str(path)
    if (
        isinstance(data, Mapping)
        and "machine_info" in data
        and isinstance(data.get("benchmarks"), list)
    ):
        # A raw pytest-benchmark JSON (what seed 003 stored): a one-round baseline.
        stats = parse_benchmark_json(data) if data["benchmarks"] else {}
        if not stats:
            raise ConfigError(label, ["pytest-benchmark JSON without benchmarks"])
        return Baseline(
            path=label,
            benchmarks={key: (s.center,) for key, s in stats.items()},
            names={key: s.name for key, s in stats.items()},
            created=data.get("datetime") if isinstance(data.get("datetime"), str) else None,
        )
    if not isinstance(data, Mapping):
        raise ConfigError(label, [f"expected a JSON object, got {type(data).__name__}"])
    version = data.get("version")
    if version != BASELINE_VERSION:
        raise ConfigError(label, [f"field 'version': expected {BASELINE_VERSION}, got {version!r}"])
    entries = data.get("benchmarks")
    if not isinstance(entries, Mapping) or not entries:
        raise ConfigError(label, ["field 'benchmarks': expected a non-empty object"])
    problems: list[str] = []
    benchmarks: dict[str, tuple[float, ...]] = {}
    names: dict[str, str] = {}
    for key, entry in entries.items():
        where = f"field 'benchmarks.{key}"
        medians = entry.get("round_medians") if isinstance(entry, Mapping) else None
        if not isinstance(medians, list) or not medians:
            problems.append(f"{where}.round_medians': expected a non-empty list of numbers")
            continue
        values = tuple(
            _number(v, f"{where}.round_medians[{i}]'", problems, positive=True)
            for i, v in enumerate(medians)
        )
        benchmarks[key] = values
        name = entry.get("name") if isinstance(entry, Mapping) else None
        names[key] = name if isinstance(name, str) else key.rsplit("::", 1)[-1]
    if problems:
        raise ConfigError(label, problems[:10])
    created = data.get("created")
    return Baseline(
        path=label,
        benchmarks=benchmarks,
        names=names,
        created=created if isinstance(created, str) else None,
    )


def baseline_from_runs(runs: Sequence[Mapping[str, Stats]]) -> dict[str, Any]:
    """The data of a new baseline (format version 1) from per-round results."""
    if not runs:
        raise BadInput("cannot build a benchmark baseline from zero rounds")
    keys = sorted({key for round_ in runs for key in round_})
    if not keys:
        raise BadInput("cannot build a benchmark baseline: the rounds contain no benchmarks")
    benchmarks: dict[str, Any] = {}
    for key in keys:
        medians = [round_[key].center for round_ in runs if key in round_]
        name = next(round_[key].name for round_ in runs if key in round_)
        benchmarks[key] = {
            "name": name,
            "round_medians": medians,
            "min": min(medians),
            "median": statistics.median(medians),
        }
    return {
        "version": BASELINE_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "rounds": len(runs),
        "statistic": "per-round median, seconds",
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        },
        "benchmarks": benchmarks,
    }


def write_baseline(path: Path | str, data: Mapping[str, Any]) -> Path:
    """Write a baseline atomically (a crash mid-write must not leave a corrupt file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
