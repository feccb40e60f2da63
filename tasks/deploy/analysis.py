"""Canary analysis from the replicas' Prometheus metrics, in the manner of
Kayenta and Argo Rollouts (https://argo-rollouts.readthedocs.io/en/stable/features/analysis/):
during a canary step both sets are scraped every ``interval``; the canary fails
when its 5xx share is over the threshold or its latency is significantly
greater than the stable set's (one-sided Mann-Whitney U on per-interval mean
latencies) by more than the allowed factor. No canary request in a step is
*no data*, a failure. Too few intervals to compare latency is *inconclusive*.
"""

from __future__ import annotations

import re
import statistics
import urllib.request
from dataclasses import dataclass, field
from typing import Literal

from cicd.config_deploy import Analysis
from tasks.rank_statistics import mann_whitney_greater

Verdict = Literal["passed", "failed", "inconclusive"]
_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})?\s+([-+0-9.eE]+|NaN|\+Inf)$")
_STATUS = re.compile(r'status="(\d{3})"')
MIN_LATENCY_INTERVALS = 3


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of one or more replicas at one moment."""

    requests: int = 0
    errors: int = 0
    latency_sum: float = 0.0
    latency_count: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            self.requests + other.requests,
            self.errors + other.errors,
            self.latency_sum + other.latency_sum,
            self.latency_count + other.latency_count,
        )

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.requests - other.requests,
            self.errors - other.errors,
            self.latency_sum - other.latency_sum,
            self.latency_count - other.latency_count,
        )


def parse_metrics(text: str) -> Counters:
    """``http_requests_total{status=...}`` and the latency histogram's sum and count."""
    requests = errors = count = 0
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if not match:
            continue
        name, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
        if name == "http_requests_total":
            requests += int(value)
            status = _STATUS.search(labels)
            if status and status.group(1).startswith("5"):
                errors += int(value)
        elif name == "http_request_duration_seconds_sum":
            total += value
        elif name == "http_request_duration_seconds_count":
            count += int(value)
    return Counters(requests, errors, total, count)


def scrape(ports: list[int], path: str, timeout: float = 2.0) -> Counters | None:
    """The sum over ``ports``; None when a replica does not answer (no data)."""
    summed = Counters()
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
                summed = summed + parse_metrics(r.read().decode("utf-8", "replace"))
        except OSError:
            return None
    return summed


@dataclass
class StepAnalysis:
    """What one canary step saw; ``verdict`` decides it."""

    canary: Counters = Counters()
    stable: Counters = Counters()
    canary_latencies: list[float] = field(default_factory=list)
    stable_latencies: list[float] = field(default_factory=list)
    verdict: Verdict = "inconclusive"
    reason: str = ""
    p_value: float | None = None
    # Intervals whose own canary error rate was over the threshold.
    failed_intervals: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "canary_requests": self.canary.requests,
            "canary_errors": self.canary.errors,
            "stable_requests": self.stable.requests,
            "stable_errors": self.stable.errors,
            "latency_p_value": self.p_value,
            "failed_intervals": self.failed_intervals,
        }


def judge(step: StepAnalysis, rules: Analysis) -> StepAnalysis:
    canary = step.canary
    if canary.requests < rules.min_requests:
        step.verdict, step.reason = (
            "failed",
            (
                f"no data: {canary.requests} canary request(s) in the step "
                f"(at least {rules.min_requests} needed)"
            ),
        )
        return step
    rate = canary.errors / canary.requests
    if step.failed_intervals > rules.failure_limit:
        step.verdict, step.reason = (
            "failed",
            (
                f"canary error rate over {rules.max_error_rate:.1%} in {step.failed_intervals} "
                f"interval(s), more than failure_limit {rules.failure_limit} "
                f"({canary.errors}/{canary.requests} in the step)"
            ),
        )
        return step
    stable = step.stable
    increase = rules.max_error_rate_increase
    if increase is not None and stable.requests:
        difference = rate - stable.errors / stable.requests
        if difference > increase:
            step.verdict, step.reason = (
                "failed",
                (
                    f"canary error rate {rate:.1%} is {difference:.1%} over the stable set's "
                    f"({stable.errors}/{stable.requests}), more than {increase:.1%}"
                ),
            )
            return step
    if rules.failure_limit == 0 and rate > rules.max_error_rate:
        step.verdict, step.reason = (
            "failed",
            (
                f"canary error rate {rate:.1%} ({canary.errors}/{canary.requests}) over "
                f"{rules.max_error_rate:.1%}"
            ),
        )
        return step
    c, s = step.canary_latencies, step.stable_latencies
    if len(c) < MIN_LATENCY_INTERVALS or len(s) < MIN_LATENCY_INTERVALS:
        step.verdict = "inconclusive" if rules.pause_when_inconclusive else "passed"
        step.reason = f"error rate {rate:.1%}; too few intervals to compare latency"
        return step
    step.p_value = mann_whitney_greater(s, c)
    ratio = statistics.median(c) / max(statistics.median(s), 1e-9)
    if step.p_value < rules.alpha and ratio > rules.max_latency_ratio:
        step.verdict, step.reason = (
            "failed",
            (f"canary latency {ratio:.2f}x the stable set's (Mann-Whitney p={step.p_value:.3g})"),
        )
        return step
    step.verdict, step.reason = "passed", f"error rate {rate:.1%}, latency ratio {ratio:.2f}"
    return step


def interval_failed(before: Counters, after: Counters, rules: Analysis) -> bool:
    """One measurement, as Argo counts them: this interval's canary error rate."""
    delta = after - before
    return delta.requests > 0 and delta.errors / delta.requests > rules.max_error_rate


def interval_latency(before: Counters, after: Counters) -> float | None:
    delta = after - before
    return delta.latency_sum / delta.latency_count if delta.latency_count > 0 else None
