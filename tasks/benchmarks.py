"""Performance baselines: run the target's pytest-benchmark suite, compare to a
baseline stored in its repository, and flag regressions (seed 003, FR-011.7).

How a run is measured
---------------------
The suite is run as ``rounds`` separate pytest invocations (``BenchmarkConfig.rounds``,
default 5), each writing pytest-benchmark JSON. The figure of one benchmark in one
round is the median of that invocation's samples (recomputed from ``stats.data``
when the JSON carries the raw samples, else ``stats.median``).

Why separate invocations rather than one invocation with many iterations: the
noise on a shared CI machine is bursty and correlated in time (another job takes
the second core for a few seconds), and it also lives at process level (memory
layout, hash seed, import order, CPU frequency). The thousands of samples one
pytest-benchmark invocation collects are taken within about a second of each
other, so they share the same disturbance: they are not independent, and any test
pooling them would call a 1% difference "significant". Separate invocations
spread over time are close to independent draws, which is what the rank test
below assumes. The price is one pytest start-up (about a second) per round.

How the comparison decides
--------------------------
For each benchmark, with B = the baseline's per-round medians and C = the current
per-round medians:

* figure = ``min`` over rounds of the per-round medians, for both sides. Noise on a
  shared machine only ever adds time, so the fastest round is the best estimate of
  the undisturbed cost: one quiet round out of five is enough.
* change = figure(C) / figure(B) - 1.
* p = one-sided Mann-Whitney U test that C tends to be larger than B (exact
  distribution with ties for small samples, normal approximation beyond
  ``EXACT_LIMIT`` values).
* **regression** when change > threshold AND p <= alpha (default 0.05). A slowdown
  must be both large (the fastest current round is more than ``threshold`` slower
  than the fastest baseline round, so every current round is) and consistent
  (the rounds as a whole are shifted, not one lucky baseline round). With 5 vs 5
  rounds the smallest possible p is 1/252 = 0.004, so a clear slowdown is
  always significant.
* **improved** symmetrically (change < -threshold and the opposite test significant).
* When the sample sizes cannot reach ``alpha`` at all (e.g. a one-round baseline
  imported from a plain pytest-benchmark JSON), the rule falls back to the
  threshold alone and says so in the row's ``rule``.
* **new**: in the current run, not in the baseline (reported, not a failure);
  **missing**: in the baseline, not in the current run (reported, not a failure:
  a removed benchmark is a code change; a crashed one already fails the run).

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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import task

from cicd.command import run
from cicd.config import BenchmarkConfig
from cicd.errors import BadInput, CicdError, ConfigError, InfrastructureError
from cicd.results import JobResult, JobState
from tasks.jobs import JobOutcome, job_outcome

BASELINE_VERSION = 1
DEFAULT_ALPHA = 0.05
# Up to this many values in both samples together, p-values are computed
# exactly (a small dynamic programme over rank sums); beyond, the normal
# approximation is accurate and the exact count would be slow.
EXACT_LIMIT = 40

Verdict = Literal["ok", "regression", "improved", "new", "missing"]


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


@dataclass(frozen=True)
class ComparisonRow:
    key: str
    name: str
    verdict: Verdict
    baseline: float | None
    current: float | None
    change: float | None
    p_value: float | None
    rule: str
    baseline_rounds: int = 0
    current_rounds: int = 0


@dataclass(frozen=True)
class Comparison:
    rows: tuple[ComparisonRow, ...]
    threshold: float
    alpha: float

    def _with(self, verdict: Verdict) -> list[ComparisonRow]:
        return [row for row in self.rows if row.verdict == verdict]

    @property
    def regressions(self) -> list[ComparisonRow]:
        return self._with("regression")

    @property
    def improved(self) -> list[ComparisonRow]:
        return self._with("improved")

    @property
    def new(self) -> list[ComparisonRow]:
        return self._with("new")

    @property
    def missing(self) -> list[ComparisonRow]:
        return self._with("missing")

    @property
    def ok(self) -> bool:
        return not self.regressions


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


# ------------------------------------------------------------------------ statistics


def _midranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        rank = (i + j) / 2 + 1  # ties share the mean of the ranks they span
        for k in range(i, j + 1):
            ranks[order[k]] = rank
        i = j + 1
    return ranks


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for "y tends to be larger than x".

    Exact (conditional on ties) when ``len(x) + len(y) <= EXACT_LIMIT``,
    otherwise the tie-corrected normal approximation with continuity correction.
    """
    n_x, n_y = len(x), len(y)
    if n_x == 0 or n_y == 0:
        raise ValueError("Mann-Whitney U needs two non-empty samples")
    total = n_x + n_y
    ranks = _midranks([*x, *y])
    # Doubled midranks are integers, so rank sums can be counted exactly.
    doubled = [round(2 * r) for r in ranks]
    observed = sum(doubled[n_x:])
    if total <= EXACT_LIMIT:
        max_sum = sum(sorted(doubled)[-n_y:])
        # ways[k][s]: subsets of k values whose doubled rank sum is s
        ways = [[0] * (max_sum + 1) for _ in range(n_y + 1)]
        ways[0][0] = 1
        for seen, r in enumerate(doubled, start=1):
            for k in range(min(seen, n_y), 0, -1):
                below, row = ways[k - 1], ways[k]
                for s in range(max_sum - r, -1, -1):
                    if below[s]:
                        row[s + r] += below[s]
        upper = sum(ways[n_y][observed:])
        return upper / math.comb(total, n_y)
    u_y = observed / 2 - n_y * (n_y + 1) / 2
    mean = n_x * n_y / 2
    tie_term = 0.0
    for value in set(ranks):
        t = ranks.count(value)
        tie_term += t**3 - t
    variance = n_x * n_y / 12 * ((total + 1) - tie_term / (total * (total - 1)))
    if variance <= 0:
        return 1.0
    z = (u_y - mean - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def smallest_p(n_x: int, n_y: int) -> float:
    """The smallest one-sided p-value samples of these sizes can reach (no ties)."""
    return 1 / math.comb(n_x + n_y, n_y)


def _percent(change: float) -> str:
    return f"{change * 100:+.1f}%"


def _compare_one(
    key: str, name: str, base: Sequence[float], cur: Sequence[float], threshold: float, alpha: float
) -> ComparisonRow:
    base_figure, cur_figure = min(base), min(cur)
    change = cur_figure / base_figure - 1
    powered = smallest_p(len(base), len(cur)) <= alpha
    p_slower = mann_whitney_greater(base, cur)
    p_faster = mann_whitney_greater(cur, base)
    limit = f"{threshold * 100:.0f}%"
    verdict: Verdict = "ok"
    if change > threshold:
        p_value = p_slower
        if not powered:
            verdict = "regression"
            rule = (
                f"{_percent(change)} > +{limit}; {len(base)} vs {len(cur)} rounds cannot reach "
                f"p <= {alpha}, threshold alone decides"
            )
        elif p_slower <= alpha:
            verdict = "regression"
            rule = f"{_percent(change)} > +{limit} and p = {p_slower:.3g} <= {alpha}"
        else:
            rule = f"{_percent(change)} > +{limit} but p = {p_slower:.3g} > {alpha}: noise"
    elif change < -threshold:
        p_value = p_faster
        if not powered or p_faster <= alpha:
            verdict = "improved"
            rule = f"{_percent(change)} < -{limit}" + (
                f" and p = {p_faster:.3g} <= {alpha}" if powered else ""
            )
        else:
            rule = f"{_percent(change)} < -{limit} but p = {p_faster:.3g} > {alpha}: noise"
    else:
        p_value = p_slower
        rule = f"within ±{limit}"
    return ComparisonRow(
        key=key,
        name=name,
        verdict=verdict,
        baseline=base_figure,
        current=cur_figure,
        change=change,
        p_value=p_value,
        rule=rule,
        baseline_rounds=len(base),
        current_rounds=len(cur),
    )


def compare(
    baseline: Baseline,
    current_rounds: Sequence[Mapping[str, Stats]],
    threshold: float,
    alpha: float = DEFAULT_ALPHA,
) -> Comparison:
    """Compare per-round results to the baseline with the rule in the module docstring."""
    if threshold <= 0:
        raise BadInput(f"benchmark threshold must be positive, got {threshold!r}")
    if not current_rounds:
        raise BadInput("no benchmark rounds to compare")
    current: dict[str, list[float]] = {}
    names: dict[str, str] = {}
    for round_ in current_rounds:
        for key, stats in round_.items():
            current.setdefault(key, []).append(stats.center)
            names.setdefault(key, stats.name)
    rows: list[ComparisonRow] = []
    for key in sorted(set(baseline.benchmarks) | set(current)):
        name = names.get(key) or baseline.names.get(key) or key
        if key not in current:
            rows.append(
                ComparisonRow(
                    key=key,
                    name=name,
                    verdict="missing",
                    baseline=baseline.figure(key),
                    current=None,
                    change=None,
                    p_value=None,
                    rule="in the baseline, not in this run",
                    baseline_rounds=len(baseline.benchmarks[key]),
                )
            )
        elif key not in baseline.benchmarks:
            rows.append(
                ComparisonRow(
                    key=key,
                    name=name,
                    verdict="new",
                    baseline=None,
                    current=min(current[key]),
                    change=None,
                    p_value=None,
                    rule="not in the baseline",
                    current_rounds=len(current[key]),
                )
            )
        else:
            rows.append(
                _compare_one(key, name, baseline.benchmarks[key], current[key], threshold, alpha)
            )
    return Comparison(rows=tuple(rows), threshold=threshold, alpha=alpha)


# ------------------------------------------------------------------------- reporting


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if value >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value / 1e-9:.4g} ns"


def render_comparison_markdown(comparison: Comparison) -> str:
    """A Markdown report: each regression named with both figures, then the full table."""
    limit = f"{comparison.threshold * 100:.0f}%"
    regressions = comparison.regressions
    if regressions:
        title = f"### Benchmarks: {len(regressions)} regression(s) over +{limit}"
    else:
        title = f"### Benchmarks: no regression over +{limit}"
    lines = [title, ""]
    for row in regressions:
        lines.append(
            f"- **REGRESSION** `{row.key}`: baseline {format_seconds(row.baseline)} -> "
            f"current {format_seconds(row.current)} ({row.rule})"
        )
    for row in comparison.missing:
        lines.append(f"- missing: `{row.key}` is in the baseline but did not run")
    if regressions or comparison.missing:
        lines.append("")
    lines += [
        "| benchmark | baseline | current | change | p (one-sided) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in comparison.rows:
        change = _percent(row.change) if row.change is not None else "-"
        p_value = f"{row.p_value:.3g}" if row.p_value is not None else "-"
        verdict = f"**{row.verdict}**" if row.verdict == "regression" else row.verdict
        lines.append(
            f"| `{row.key}` | {format_seconds(row.baseline)} | {format_seconds(row.current)} "
            f"| {change} | {p_value} | {verdict} |"
        )
    lines += [
        "",
        f"Figures are the fastest per-round median. A regression needs a change over +{limit} "
        f"and a one-sided Mann-Whitney U p <= {comparison.alpha} across rounds.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- running


def run_benchmarks(
    python: Path | str,
    workdir: Path,
    paths: Sequence[str],
    rounds: int,
    env: Mapping[str, str] | None,
    out_dir: Path,
    timeout: float,
) -> list[dict[str, Stats]]:
    """Run the suite ``rounds`` times, one pytest process each; returns per-round stats.

    ``timeout`` bounds all rounds together (it is ``BenchmarkConfig.timeout``); each
    round gets what is left. Round N writes ``out_dir/round-N.json`` and its output
    to ``out_dir/round-N.log``.
    """
    if rounds < 1:
        raise BadInput(f"benchmarks.rounds must be at least 1, got {rounds}")
    if not paths:
        raise BadInput("benchmarks.paths is empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Stats]] = []
    remaining = timeout
    for number in range(1, rounds + 1):
        json_path = out_dir / f"round-{number}.json"
        log_path = out_dir / f"round-{number}.log"
        json_path.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
        argv = [
            str(python),
            "-m",
            "pytest",
            *paths,
            "--benchmark-only",
            f"--benchmark-json={json_path}",
            "-q",
        ]
        if remaining <= 0:
            raise BenchmarkError(
                f"benchmarks timed out after {timeout:.0f}s before round {number} of {rounds}"
            )
        try:
            result = run(argv, cwd=workdir, env=env, timeout=remaining, log_path=log_path)
        except FileNotFoundError:
            raise InfrastructureError(f"benchmark interpreter {python} not found") from None
        remaining -= result.duration
        if result.timed_out:
            raise BenchmarkError(
                f"benchmarks timed out after {timeout:.0f}s in round {number} of {rounds} "
                f"(`{result.display}`, log {log_path})"
            )
        if result.returncode == 4 and "--benchmark" in result.output:
            raise BadInput(
                "pytest-benchmark is not installed in the target environment: add "
                "'pytest-benchmark' to environment.packages or to the installed extra"
            )
        if result.returncode == 5:
            raise BadInput(f"benchmarks.paths {list(paths)}: pytest collected no tests")
        if not result.ok:
            raise BenchmarkError(
                f"benchmark round {number} of {rounds} failed with exit code "
                f"{result.returncode} (`{result.display}`, log {log_path}):\n{result.tail()}"
            )
        # pytest-benchmark writes no JSON at all when no test used the fixture.
        stats = parse_benchmark_json(json_path) if json_path.is_file() else {}
        if not stats:
            raise BadInput(
                f"benchmarks.paths {list(paths)}: no test uses the pytest-benchmark "
                "`benchmark` fixture"
            )
        results.append(stats)
    return results


def check_benchmarks(
    python: Path | str,
    workdir: Path,
    config: BenchmarkConfig,
    env: Mapping[str, str] | None,
    out_dir: Path,
    alpha: float = DEFAULT_ALPHA,
) -> Comparison:
    """Load the baseline (first: a missing one fails before minutes of running),
    run the rounds and compare. The baseline path is relative to ``workdir``."""
    baseline = load_baseline(workdir / config.baseline)
    rounds = run_benchmarks(
        python, workdir, config.paths, config.rounds, env, out_dir, config.timeout
    )
    return compare(baseline, rounds, config.threshold, alpha)


# --- the job -----------------------------------------------------------------------

JOB_NAME = "performance-baseline"


def run_benchmark_job(
    python: Path | str,
    workdir: Path,
    config: BenchmarkConfig,
    env: Mapping[str, str] | None,
    out_dir: Path,
) -> JobResult:
    """The seed's ``performance-baseline`` job, with its comparison as the summary section."""
    started = time.monotonic()
    try:
        comparison = check_benchmarks(python, workdir, config, env, out_dir)
    except (CicdError, OSError) as exc:
        # A missing or corrupt baseline is an error of the stage, never a pass.
        return JobResult(
            JOB_NAME,
            JobState.FAILED,
            time.monotonic() - started,
            reason=str(exc),
            section=f"## Performance baseline\n\n❌ {exc}",
        )
    regressions = comparison.regressions
    reason = ""
    if regressions:
        reason = "regression: " + ", ".join(
            f"{row.name} {format_seconds(row.baseline)} -> {format_seconds(row.current)}"
            for row in regressions
        )
    rows = [
        {
            "name": row.name,
            "verdict": row.verdict,
            "baseline": row.baseline,
            "current": row.current,
            "change": row.change,
            "p_value": row.p_value,
        }
        for row in comparison.rows
    ]
    return JobResult(
        JOB_NAME,
        JobState.FAILED if regressions else JobState.PASSED,
        time.monotonic() - started,
        reason=reason,
        details={"benchmarks": rows},
        section=render_comparison_markdown(comparison),
    )


@task(name="performance-baseline")
def benchmark_job(
    python: Path, workdir: Path, config: BenchmarkConfig, env: dict[str, str], out_dir: Path
) -> JobOutcome:
    return job_outcome(run_benchmark_job(python, workdir, config, env, out_dir))
