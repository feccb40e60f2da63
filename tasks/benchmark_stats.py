"""Comparing benchmark rounds with a baseline (``tasks/benchmark_baseline.py``):
the statistics that decide a regression (seed 003, FR-011.7). Pure functions,
no processes; ``tasks/benchmarks.py`` runs the suite.

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

"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cicd.errors import BadInput
from tasks.benchmark_baseline import Baseline, Stats

DEFAULT_ALPHA = 0.05
# Up to this many values in both samples together, p-values are computed
# exactly (a small dynamic programme over rank sums); beyond, the normal
# approximation is accurate and the exact count would be slow.
EXACT_LIMIT = 40

Verdict = Literal["ok", "regression", "improved", "new", "missing"]


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
