"""Rank statistics for deciding a benchmark regression: the one-sided
Mann-Whitney U test, the Hodges-Lehmann ratio that goes with it, Holm's
step-down correction, and the number of rounds for which the test can reach
Holm's bar. Pure functions; ``tasks/benchmark_stats.py`` explains how the
gate combines them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

# Up to this many values in both samples together, p-values are computed
# exactly (a small dynamic programme over rank sums); beyond, the normal
# approximation is accurate and the exact count would be slow.
EXACT_LIMIT = 40


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


def hodges_lehmann_ratio(base: Sequence[float], cur: Sequence[float]) -> float:
    """The median of every ``cur / base`` ratio: how many times slower the current side is."""
    return statistics.median(c / b for b in base for c in cur)


def holm_rejected(p_values: Mapping[str, float], family: int, alpha: float) -> set[str]:
    """The keys Holm's step-down procedure rejects among ``family`` hypotheses.

    Hypotheses not in ``p_values`` (benchmarks that were not suspects) count in
    the family with p = 1: they rank last and never lower anyone's bar.
    """
    if family < len(p_values):
        raise ValueError(f"family of {family} is smaller than {len(p_values)} p-values")
    rejected: set[str] = set()
    for rank, (key, p_value) in enumerate(sorted(p_values.items(), key=lambda kv: kv[1])):
        if p_value > alpha / (family - rank):
            break
        rejected.add(key)
    return rejected


# How far below Holm's strictest bar the smallest possible p must lie: with
# p_min just at the bar, one round swapped by noise would clear a real 2x slowdown.
POWER_MARGIN = 20


def rounds_for_family(
    family: int, alpha: float, minimum: int, baseline_rounds: int | None = None
) -> int:
    """Fresh rounds per side (at least ``minimum``) for which the smallest possible
    p of the rank test lies ``POWER_MARGIN`` times below Holm's strictest bar,
    ``alpha / family``.

    ``baseline_rounds`` fixes the baseline side's size (a stored baseline); else
    both sides get the same number of rounds (interleaved).
    """
    bar = alpha / max(1, family) / POWER_MARGIN
    rounds = max(1, minimum)
    while smallest_p(baseline_rounds or rounds, rounds) > bar:
        rounds += 1
    return rounds
