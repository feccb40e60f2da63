"""The weekly LLM cost report (the seed's ``cost-alert.yml``), from the cost store.

For the 7 days ending at a given instant: real spend per flow, per model and
per day; the trend against the 7 days before; the costliest runs; alerts
for runs over their threshold or budget and for a week over its threshold.
:func:`build_report` (``tasks.llm.weekly_spend``) is pure (rows in, report
out); :func:`render_markdown` and :func:`summary_text` turn the report into
the artifact and the notification. :func:`weekly_report` is the only part
that reads the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from cicd.config import PipelineConfig
from tasks.llm.budget import format_budget, format_usd
from tasks.llm.calls import as_utc
from tasks.llm.costs import CostStore
from tasks.llm.weekly_spend import (
    DEFAULT_TOP_N,
    WEEK,
    Alert,
    DaySpend,
    FlowSpend,
    ModelSpend,
    Trend,
    WeeklyReport,
    build_report,
)

__all__ = [
    "DEFAULT_TOP_N",
    "REPORT_FLOW",
    "WEEK",
    "Alert",
    "DaySpend",
    "FlowSpend",
    "ModelSpend",
    "Trend",
    "WeeklyReport",
    "alert_thresholds",
    "build_report",
    "render_markdown",
    "summary_text",
    "weekly_report",
]

REPORT_FLOW = "cost-report"


def weekly_report(
    store: CostStore,
    end: datetime,
    *,
    top_n: int = DEFAULT_TOP_N,
    run_alert_usd: float | None = None,
    flow_alert_usd: Mapping[str, float] | None = None,
    week_alert_usd: float | None = None,
) -> WeeklyReport:
    """Read the window ending at ``end`` (and the week before) from the store; build the report."""
    end = as_utc(end)
    start = end - WEEK
    return build_report(
        store.calls_between(start, end),
        store.runs_between(start, end),
        store.calls_between(start - WEEK, start),
        end=end,
        top_n=top_n,
        run_alert_usd=run_alert_usd,
        flow_alert_usd=flow_alert_usd,
        week_alert_usd=week_alert_usd,
    )


def alert_thresholds(config: PipelineConfig) -> tuple[dict[str, float], float | None]:
    """Per-flow run thresholds and the week threshold from ``pipelines.*.alert_usd``.

    The ``cost-report`` pipeline's ``alert_usd`` is the week's threshold.
    """
    per_flow = {
        str(flow): settings.alert_usd
        for flow, settings in config.pipelines.items()
        if settings.alert_usd is not None and flow != REPORT_FLOW
    }
    return per_flow, config.settings("cost-report").alert_usd


# --- rendering -------------------------------------------------------------------


def _period(report: WeeklyReport) -> str:
    last = (report.end - timedelta(microseconds=1)).date()
    return f"{report.start.date().isoformat()} to {last.isoformat()}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    # A "|" in a repo address or model name would split the cell.
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def render_markdown(report: WeeklyReport) -> str:
    """The report as a markdown document (the flow's artifact)."""
    lines = [
        f"# LLM cost report: {_period(report)}",
        "",
        f"**Spend: {format_usd(report.spent_usd)}** over {report.calls} calls in "
        f"{report.runs} runs; week before {format_usd(report.trend.previous_usd)}, "
        f"change {report.trend.describe()}.",
        f"Mock and replay calls would have cost {format_usd(report.would_cost_usd)} "
        "against the real API.",
        "",
    ]
    if report.alerts:
        lines += ["## Alerts", ""]
        lines += [f"- **{alert.kind}**: {alert.message}" for alert in report.alerts]
        lines.append("")
    lines += ["## Per flow", ""]
    lines += _table(
        ["flow", "runs", "calls", "spend", "would have cost"],
        (
            [
                f.flow,
                str(f.runs),
                str(f.calls),
                format_usd(f.spent_usd),
                format_usd(f.would_cost_usd),
            ]
            for f in report.per_flow
        ),
    )
    lines += ["", "## Per model", ""]
    lines += _table(
        ["model", "calls", "prompt tokens", "completion tokens", "spend", "would have cost"],
        (
            [
                m.model + (f" ({m.unpriced_calls} unpriced)" if m.unpriced_calls else ""),
                str(m.calls),
                str(m.prompt_tokens),
                str(m.completion_tokens),
                format_usd(m.spent_usd),
                format_usd(m.would_cost_usd),
            ]
            for m in report.per_model
        ),
    )
    lines += ["", "## Per day (UTC)", ""]
    lines += _table(
        ["day", "calls", "spend", "would have cost"],
        (
            [d.day.isoformat(), str(d.calls), format_usd(d.spent_usd), format_usd(d.would_cost_usd)]
            for d in report.per_day
        ),
    )
    lines += ["", f"## Costliest runs (top {len(report.top_runs)})", ""]
    lines += _table(
        ["run", "flow", "repo@ref", "started (UTC)", "status", "spend", "budget"],
        (
            [
                r.run_id,
                r.flow,
                f"{r.repo}@{r.ref}",
                r.started_at.strftime("%Y-%m-%d %H:%M"),
                r.status,
                format_usd(r.total_usd),
                format_budget(r.budget_usd) if r.budget_usd is not None else "-",
            ]
            for r in report.top_runs
        ),
    )
    notes = []
    if report.unpriced_calls:
        notes.append(
            f"{report.unpriced_calls} calls used models missing from the price table "
            "and are not counted."
        )
    if report.replay_misses:
        notes.append(f"{report.replay_misses} replay misses (requests with no recording).")
    if report.errors:
        notes.append(f"{report.errors} calls failed or were blocked by a budget.")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def summary_text(report: WeeklyReport) -> str:
    """A few lines for the notification (Slack text)."""
    lines = [
        f"LLM spend {_period(report)}: {format_usd(report.spent_usd)}, "
        f"{report.trend.describe()} vs the week before; {report.calls} calls in "
        f"{report.runs} runs; mock/replay would have cost {format_usd(report.would_cost_usd)}."
    ]
    spenders = [f for f in report.per_flow if f.spent_usd > 0][:3]
    if spenders:
        lines.append(
            "Top flows: " + ", ".join(f"{f.flow} {format_usd(f.spent_usd)}" for f in spenders)
        )
    if report.alerts:
        lines.append(
            f"{len(report.alerts)} alert(s): " + "; ".join(a.message for a in report.alerts[:3])
        )
    return "\n".join(lines)
