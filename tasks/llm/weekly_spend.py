"""The weekly LLM spend figures, pure: stored calls and runs in, a
:class:`WeeklyReport` out (per flow, per model, per day, the trend against
the week before, the costliest runs and the alerts).

"Spend" is real money (live and record calls). Mock and replay calls are
counted separately as "would have cost": their price against the real API.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from tasks.llm.budget import format_budget, format_usd
from tasks.llm.calls import as_utc
from tasks.llm.costs import RunRow, StoredCall

WEEK = timedelta(days=7)
DEFAULT_TOP_N = 5


def _total(amounts: Iterable[float | None]) -> float:
    # Decimal over the shortest repr of each float: a week of many tiny call
    # costs adds up to the figure a person gets by hand, not 0.30000000000000004.
    return float(sum((Decimal(repr(a)) for a in amounts if a), Decimal(0)))


@dataclass(frozen=True)
class FlowSpend:
    flow: str
    runs: int
    calls: int
    spent_usd: float
    would_cost_usd: float


@dataclass(frozen=True)
class ModelSpend:
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    spent_usd: float
    would_cost_usd: float
    unpriced_calls: int


@dataclass(frozen=True)
class DaySpend:
    day: date
    calls: int
    spent_usd: float
    would_cost_usd: float


@dataclass(frozen=True)
class Trend:
    previous_usd: float
    current_usd: float

    @property
    def change_usd(self) -> float:
        return _total([self.current_usd, -self.previous_usd])

    @property
    def change_pct(self) -> float | None:
        """Percent change; ``None`` when the week before spent nothing."""
        if self.previous_usd == 0:
            return None
        return float(
            (Decimal(repr(self.current_usd)) - Decimal(repr(self.previous_usd)))
            / Decimal(repr(self.previous_usd))
            * 100
        )

    def describe(self) -> str:
        sign = "+" if self.change_usd >= 0 else "-"
        amount = f"{sign}{format_usd(abs(self.change_usd))}"
        pct = self.change_pct
        if pct is None:
            return f"{amount} (no spend the week before)"
        return f"{amount} ({pct:+.1f}%)"


@dataclass(frozen=True)
class Alert:
    kind: Literal["run", "budget", "week"]
    message: str
    amount_usd: float
    threshold_usd: float
    run_id: str | None = None


@dataclass(frozen=True)
class WeeklyReport:
    start: datetime
    end: datetime
    spent_usd: float
    would_cost_usd: float
    calls: int
    runs: int
    per_flow: tuple[FlowSpend, ...]
    per_model: tuple[ModelSpend, ...]
    per_day: tuple[DaySpend, ...]
    trend: Trend
    top_runs: tuple[RunRow, ...]
    alerts: tuple[Alert, ...]
    unpriced_calls: int
    replay_misses: int
    errors: int


def _days(start: datetime, end: datetime) -> list[date]:
    last = (end - timedelta(microseconds=1)).date()
    days, day = [], start.date()
    while day <= last:
        days.append(day)
        day += timedelta(days=1)
    return days


def _per_flow(calls: Sequence[StoredCall], runs: Sequence[RunRow]) -> tuple[FlowSpend, ...]:
    by_flow: dict[str, list[StoredCall]] = defaultdict(list)
    for stored in calls:
        by_flow[stored.flow].append(stored)
    run_ids: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        run_ids[run.flow].add(run.run_id)
    for stored in calls:
        run_ids[stored.flow].add(stored.run_id)
    rows = [
        FlowSpend(
            flow=flow,
            runs=len(run_ids[flow]),
            calls=len(by_flow[flow]),
            spent_usd=_total(s.call.spent_usd for s in by_flow[flow]),
            would_cost_usd=_total(s.call.cost_usd for s in by_flow[flow] if s.call.would_cost),
        )
        for flow in set(by_flow) | set(run_ids)
    ]
    return tuple(sorted(rows, key=lambda r: (-r.spent_usd, -r.would_cost_usd, r.flow)))


def _per_model(calls: Sequence[StoredCall]) -> tuple[ModelSpend, ...]:
    by_model: dict[str, list[StoredCall]] = defaultdict(list)
    for stored in calls:
        by_model[stored.call.model or "(none)"].append(stored)
    rows = [
        ModelSpend(
            model=model,
            calls=len(group),
            prompt_tokens=sum(s.call.prompt_tokens for s in group),
            completion_tokens=sum(s.call.completion_tokens for s in group),
            spent_usd=_total(s.call.spent_usd for s in group),
            would_cost_usd=_total(s.call.cost_usd for s in group if s.call.would_cost),
            unpriced_calls=sum(1 for s in group if s.call.cost_usd is None),
        )
        for model, group in by_model.items()
    ]
    return tuple(sorted(rows, key=lambda r: (-r.spent_usd, -r.would_cost_usd, r.model)))


def _per_day(calls: Sequence[StoredCall], start: datetime, end: datetime) -> tuple[DaySpend, ...]:
    by_day: dict[date, list[StoredCall]] = defaultdict(list)
    for stored in calls:
        by_day[as_utc(stored.call.timestamp).date()].append(stored)
    return tuple(
        DaySpend(
            day=day,
            calls=len(by_day[day]),
            spent_usd=_total(s.call.spent_usd for s in by_day[day]),
            would_cost_usd=_total(s.call.cost_usd for s in by_day[day] if s.call.would_cost),
        )
        for day in _days(start, end)
    )


def _alerts(
    runs: Sequence[RunRow],
    spent_usd: float,
    run_alert_usd: float | None,
    flow_alert_usd: Mapping[str, float],
    week_alert_usd: float | None,
) -> tuple[Alert, ...]:
    alerts: list[Alert] = []
    for run in sorted(runs, key=lambda r: (-r.total_usd, r.run_id)):
        where = f"run {run.run_id} ({run.flow}, {run.repo}@{run.ref})"
        threshold = flow_alert_usd.get(run.flow, run_alert_usd)
        if threshold is not None and run.total_usd > threshold:
            alerts.append(
                Alert(
                    "run",
                    f"{where} spent {format_usd(run.total_usd)}, over the alert threshold of "
                    f"{format_budget(threshold)}",
                    run.total_usd,
                    threshold,
                    run.run_id,
                )
            )
        if run.budget_usd is not None and run.total_usd > run.budget_usd:
            alerts.append(
                Alert(
                    "budget",
                    f"{where} spent {format_usd(run.total_usd)}, over its budget of "
                    f"{format_budget(run.budget_usd)}",
                    run.total_usd,
                    run.budget_usd,
                    run.run_id,
                )
            )
    if week_alert_usd is not None and spent_usd > week_alert_usd:
        alerts.append(
            Alert(
                "week",
                f"the week's LLM spend {format_usd(spent_usd)} is over the alert threshold of "
                f"{format_budget(week_alert_usd)}",
                spent_usd,
                week_alert_usd,
            )
        )
    return tuple(alerts)


def build_report(
    calls: Sequence[StoredCall],
    runs: Sequence[RunRow],
    previous_calls: Sequence[StoredCall],
    *,
    end: datetime,
    top_n: int = DEFAULT_TOP_N,
    run_alert_usd: float | None = None,
    flow_alert_usd: Mapping[str, float] | None = None,
    week_alert_usd: float | None = None,
) -> WeeklyReport:
    """The report of the 7 days before ``end`` from that window's calls and runs.

    ``calls`` and ``runs`` are the window's (by call time and run start);
    ``previous_calls`` are the 7 days before it, for the trend. A run is
    alerted when it spent more than its flow's threshold in
    ``flow_alert_usd`` (else ``run_alert_usd``) or more than its budget.
    """
    end = as_utc(end)
    start = end - WEEK
    spent = _total(s.call.spent_usd for s in calls)
    top = sorted(runs, key=lambda r: (-r.total_usd, -r.would_cost_usd, r.started_at, r.run_id))
    return WeeklyReport(
        start=start,
        end=end,
        spent_usd=spent,
        would_cost_usd=_total(s.call.cost_usd for s in calls if s.call.would_cost),
        calls=len(calls),
        runs=len({r.run_id for r in runs} | {s.run_id for s in calls}),
        per_flow=_per_flow(calls, runs),
        per_model=_per_model(calls),
        per_day=_per_day(calls, start, end),
        trend=Trend(
            previous_usd=_total(s.call.spent_usd for s in previous_calls), current_usd=spent
        ),
        top_runs=tuple(top[: max(top_n, 0)]),
        alerts=_alerts(runs, spent, run_alert_usd, flow_alert_usd or {}, week_alert_usd),
        unpriced_calls=sum(1 for s in calls if s.call.cost_usd is None),
        replay_misses=sum(1 for s in calls if s.call.status == "miss"),
        errors=sum(1 for s in calls if s.call.status in ("error", "blocked")),
    )
