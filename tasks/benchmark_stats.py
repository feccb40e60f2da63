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

That first comparison is a *screen*: its regressions are suspects, not verdicts.
On a shared machine a burst of load can cover all five rounds of one benchmark,
and with 20+ benchmarks each tested at alpha = 0.05 one false alarm per run is
expected. So a suspect fails the gate only when ``confirm`` upholds it on fresh
rounds (``tasks/benchmarks.py`` measures them):

* **interleaved against the baseline's code** where the history has it: the
  suspects alone, alternating between the baseline's commit and this one
  (ABBA order, so a drift in load falls on both sides), as ``asv continuous``
  and benchstat's A/B advice do (https://asv.readthedocs.io/en/stable/commands.html#asv-continuous,
  https://pkg.go.dev/golang.org/x/perf/cmd/benchstat). Load then slows both
  sides alike; only the code's own cost separates them.
* **Holm's correction** over every benchmark compared, not just the suspects
  (https://en.wikipedia.org/wiki/Holm%E2%80%93Bonferroni_method): the i-th
  smallest p must be <= alpha / (N - i + 1). The number of fresh rounds is
  raised until the smallest possible p can pass that bar (``rounds_for_family``).
* **an effect size on top of significance**: the Hodges-Lehmann estimate of the
  ratio (the median of all current/baseline ratios, the estimator that goes
  with the rank test, https://en.wikipedia.org/wiki/Hodges%E2%80%93Lehmann_estimator)
  and the ratio of the fastest rounds must both exceed 1 + threshold. A
  significant +3 % is not a regression.

A suspect that is not upheld is reported ``ok`` with both figures in its rule.

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cicd.errors import BadInput
from tasks.benchmark_baseline import Baseline, Stats
from tasks.rank_statistics import (
    hodges_lehmann_ratio,
    holm_rejected,
    mann_whitney_greater,
    smallest_p,
)

DEFAULT_ALPHA = 0.05
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
    # For suspects re-measured by ``confirm``: what the fresh rounds were compared with.
    confirmed_against: str | None = None


@dataclass(frozen=True)
class Comparison:
    rows: tuple[ComparisonRow, ...]
    threshold: float
    alpha: float
    # Set by ``confirm``: how many benchmarks Holm's correction counted.
    family: int | None = None

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


# ---------------------------------------------------------------------- confirmation


def confirm(
    screen: Comparison,
    samples: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    against: str,
) -> Comparison:
    """Uphold or clear the screen's regressions on fresh ``(baseline, current)`` rounds.

    A suspect stays a regression when Holm's correction over every benchmark the
    screen compared rejects "not slower" AND the Hodges-Lehmann ratio exceeds
    1 + threshold. Suspects missing from ``samples`` stay as the screen said.
    """
    threshold, alpha = screen.threshold, screen.alpha
    family = sum(1 for row in screen.rows if row.baseline_rounds and row.current_rounds)
    p_values = {key: mann_whitney_greater(base, cur) for key, (base, cur) in samples.items()}
    rejected = holm_rejected(p_values, family, alpha)
    rows: list[ComparisonRow] = []
    for row in screen.rows:
        if row.verdict != "regression" or row.key not in samples:
            rows.append(row)
            continue
        base, cur = samples[row.key]
        # Both must clear the threshold: the typical ratio (Hodges-Lehmann) and
        # the fastest rounds' ratio, which a burst of load cannot raise unless it
        # hits every current round (the screen's figure, module docstring).
        ratio = min(hodges_lehmann_ratio(base, cur), min(cur) / min(base))
        p_value = p_values[row.key]
        upheld = row.key in rejected and ratio - 1 > threshold
        limit = f"{threshold * 100:.0f}%"
        fresh = (
            f"{len(base)} vs {len(cur)} fresh rounds against {against}: "
            f"{_percent(ratio - 1)} (the smaller of Hodges-Lehmann and fastest rounds), "
            f"p = {p_value:.3g}"
        )
        if upheld:
            rule = f"{fresh} <= Holm's bar over {family} benchmarks, over +{limit}"
        elif row.key in rejected:
            rule = f"screen {_percent(row.change or 0)}; {fresh}: under +{limit}, too small to fail"
        else:
            rule = (
                f"screen {_percent(row.change or 0)}; {fresh}: not significant after Holm's "
                f"correction over {family} benchmarks, noise"
            )
        rows.append(
            ComparisonRow(
                key=row.key,
                name=row.name,
                verdict="regression" if upheld else "ok",
                baseline=min(base),
                current=min(cur),
                change=ratio - 1,
                p_value=p_value,
                rule=rule,
                baseline_rounds=len(base),
                current_rounds=len(cur),
                confirmed_against=against,
            )
        )
    return Comparison(rows=tuple(rows), threshold=threshold, alpha=alpha, family=family)


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
    if comparison.family is not None:
        lines.append(
            "Suspects were measured again, and fail only when the fresh rounds are significant "
            f"after Holm's correction over {comparison.family} benchmarks and the "
            f"Hodges-Lehmann slowdown is over +{limit}."
        )
    confirmed = [row for row in comparison.rows if row.confirmed_against]
    for row in confirmed:
        lines.append(f"- `{row.key}`: {row.rule}")
    return "\n".join(lines) + "\n"
