"""The weekly cost report from cost records seeded in a real SQLite store.

The seeded week (2026-03-02 to 2026-03-08, UTC) and the one before:

    run  flow           started            calls (cost; w = would have cost)
    old  nightly        02-24 02:00        1.00, 1.00                          (previous week)
    r0   nightly        03-01 23:50        0.25 at 03-02 00:10  (run started before the window)
    n1   nightly        03-03 02:00        0.75 gpt-4o-mini, 0.50 llama; budget 2.00
    i1   integration    03-04 12:00        w0.125, w0.125, a replay miss
    n2   nightly        03-05 02:00        2.25, 0.50; budget 2.00
    p1   pr-validation  03-08 23:00        w0.0625, an unpriced model
    late nightly        03-09 00:00        5.00 (at the window's end: excluded)
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from cicd.config import parse_config
from tasks.cost_report import (
    alert_thresholds,
    build_report,
    render_markdown,
    summary_text,
    weekly_report,
)
from tasks.llm.calls import CallRecord
from tasks.llm.costs import CostStore

END = datetime(2026, 3, 9, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def call(
    when: datetime,
    cost: float | None,
    *,
    would: bool = False,
    model: str = "gpt-4o-mini",
    tokens: tuple[int, int] = (1000, 100),
    status: str = "ok",
) -> CallRecord:
    return CallRecord(
        timestamp=when,
        mode="replay" if would else "live",
        model=model,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        latency_ms=10.0,
        cost_usd=cost,
        would_cost=would,
        status=status,  # type: ignore[arg-type]
        http_status=200 if status == "ok" else 404,
        source="recording" if would else ("none" if status == "miss" else "upstream"),
    )


@pytest.fixture
def store(tmp_path: Path) -> CostStore:
    store = CostStore(f"sqlite:///{tmp_path / 'costs.db'}")
    seed = {
        ("old", "nightly", at(24, 2, month=2), None): [
            call(at(24, 2, 5, month=2), 1.0),
            call(at(24, 2, 6, month=2), 1.0),
        ],
        ("r0", "nightly", at(1, 23, 50), None): [call(at(2, 0, 10), 0.25, tokens=(500, 50))],
        ("n1", "nightly", at(3, 2), 2.0): [
            call(at(3, 2, 5), 0.75, tokens=(2000, 300)),
            call(at(3, 2, 10), 0.5, model="llama-3.1-8b-instant", tokens=(4000, 400)),
        ],
        ("i1", "integration", at(4, 12), None): [
            call(at(4, 12, 1), 0.125, would=True),
            call(at(4, 12, 2), 0.125, would=True),
            call(at(4, 12, 3), 0.0, status="miss", tokens=(0, 0)),
        ],
        ("n2", "nightly", at(5, 2), 2.0): [
            call(at(5, 2, 1), 2.25, tokens=(3000, 700)),
            call(at(5, 2, 2), 0.5),
        ],
        ("p1", "pr-validation", at(8, 23), None): [
            call(at(8, 23, 10), 0.0625, would=True, tokens=(100, 10)),
            call(at(8, 23, 20), None, would=True, model="mystery", tokens=(7, 3)),
        ],
        ("late", "nightly", END, None): [call(END, 5.0)],
    }
    for (run_id, flow, started, budget), calls in seed.items():
        store.record_run(
            run_id,
            flow=flow,
            repo="file:///repos/agentkit",
            ref="main",
            started_at=started,
            status="completed",
            budget_usd=budget,
        )
        store.record_calls(run_id, calls)
    return store


def test_weekly_totals_per_flow_model_and_day(store: CostStore) -> None:
    report = weekly_report(store, END, top_n=3)
    assert (report.start, report.end) == (END - timedelta(days=7), END)
    assert report.spent_usd == 4.25  # 0.25 + 0.75 + 0.5 + 2.25 + 0.5
    assert report.would_cost_usd == 0.3125  # 0.125 + 0.125 + 0.0625
    assert (report.calls, report.runs) == (10, 5)
    assert (report.unpriced_calls, report.replay_misses, report.errors) == (1, 1, 0)

    assert [(f.flow, f.runs, f.calls, f.spent_usd, f.would_cost_usd) for f in report.per_flow] == [
        ("nightly", 3, 5, 4.25, 0.0),
        ("integration", 1, 3, 0.0, 0.25),
        ("pr-validation", 1, 2, 0.0, 0.0625),
    ]
    assert [
        (
            m.model,
            m.calls,
            m.prompt_tokens,
            m.completion_tokens,
            m.spent_usd,
            m.would_cost_usd,
            m.unpriced_calls,
        )
        for m in report.per_model
    ] == [
        # 500 + 2000 + 3000 + 1000 + 1000 + 1000 + 0 + 100 prompt tokens
        ("gpt-4o-mini", 8, 8600, 1360, 3.75, 0.3125, 0),
        ("llama-3.1-8b-instant", 1, 4000, 400, 0.5, 0.0, 0),
        ("mystery", 1, 7, 3, 0.0, 0.0, 1),
    ]
    assert [(d.day, d.calls, d.spent_usd, d.would_cost_usd) for d in report.per_day] == [
        (date(2026, 3, 2), 1, 0.25, 0.0),
        (date(2026, 3, 3), 2, 1.25, 0.0),
        (date(2026, 3, 4), 3, 0.0, 0.25),
        (date(2026, 3, 5), 2, 2.75, 0.0),
        (date(2026, 3, 6), 0, 0.0, 0.0),
        (date(2026, 3, 7), 0, 0.0, 0.0),
        (date(2026, 3, 8), 2, 0.0, 0.0625),
    ]


def test_trend_top_runs_and_alerts(store: CostStore) -> None:
    report = weekly_report(
        store, END, top_n=3, run_alert_usd=1.0, flow_alert_usd={"nightly": 2.5}, week_alert_usd=4.0
    )
    assert (report.trend.previous_usd, report.trend.current_usd) == (2.0, 4.25)
    assert report.trend.change_usd == 2.25
    assert report.trend.change_pct == 112.5
    assert report.trend.describe() == "+$2.2500 (+112.5%)"
    # By real spend, then by what mock/replay would have cost.
    assert [(r.run_id, r.total_usd) for r in report.top_runs] == [
        ("n2", 2.75),
        ("n1", 1.25),
        ("i1", 0.0),
    ]
    assert [(a.kind, a.run_id, a.amount_usd, a.threshold_usd) for a in report.alerts] == [
        ("run", "n2", 2.75, 2.5),  # nightly's own threshold, not the default 1.00
        ("budget", "n2", 2.75, 2.0),
        ("week", None, 4.25, 4.0),
    ]
    assert report.alerts[0].message == (
        "run n2 (nightly, file:///repos/agentkit@main) spent $2.7500, over the alert "
        "threshold of $2.50"
    )
    assert (
        report.alerts[2].message
        == "the week's LLM spend $4.2500 is over the alert threshold of $4.00"
    )


def test_markdown_and_summary(store: CostStore) -> None:
    report = weekly_report(store, END, top_n=2, week_alert_usd=4.0)
    markdown = render_markdown(report)
    assert markdown.startswith("# LLM cost report: 2026-03-02 to 2026-03-08\n")
    assert (
        "**Spend: $4.2500** over 10 calls in 5 runs; week before $2.0000, "
        "change +$2.2500 (+112.5%)." in markdown
    )
    assert "| nightly | 3 | 5 | $4.2500 | $0.0000 |" in markdown
    assert "| gpt-4o-mini | 8 | 8600 | 1360 | $3.7500 | $0.3125 |" in markdown
    assert "| mystery (1 unpriced) | 1 | 7 | 3 | $0.0000 | $0.0000 |" in markdown
    assert "| 2026-03-06 | 0 | $0.0000 | $0.0000 |" in markdown
    assert (
        "| n2 | nightly | file:///repos/agentkit@main | 2026-03-05 02:00 | completed | "
        "$2.7500 | $2.00 |" in markdown
    )
    assert "| n1 |" in markdown and "| i1 |" not in markdown  # top 2 only
    assert "- **week**: the week's LLM spend $4.2500" in markdown
    assert "1 replay misses" in markdown

    summary = summary_text(report)
    assert summary.splitlines()[0] == (
        "LLM spend 2026-03-02 to 2026-03-08: $4.2500, +$2.2500 (+112.5%) vs the week before; "
        "10 calls in 5 runs; mock/replay would have cost $0.3125."
    )
    assert "Top flows: nightly $4.2500" in summary
    # No run threshold given: n2's budget overrun and the week's total.
    assert summary.splitlines()[2] == (
        "2 alert(s): run n2 (nightly, file:///repos/agentkit@main) spent $2.7500, over its "
        "budget of $2.00; the week's LLM spend $4.2500 is over the alert threshold of $4.00"
    )


def test_an_empty_week_and_a_first_week(tmp_path: Path) -> None:
    report = build_report([], [], [], end=END)
    assert report.spent_usd == 0.0 and report.calls == 0 and report.alerts == ()
    assert len(report.per_day) == 7 and report.trend.change_pct is None
    assert report.trend.describe() == "+$0.0000 (no spend the week before)"
    assert "| 2026-03-08 | 0 | $0.0000 | $0.0000 |" in render_markdown(report)
    # A window ending mid-day covers 8 calendar days, partly.
    assert len(build_report([], [], [], end=END + timedelta(hours=12)).per_day) == 8


def test_alert_thresholds_from_the_pipeline_config() -> None:
    config = parse_config(
        "pipelines:\n"
        "  nightly: {alert_usd: 5.0, budget_usd: 2.0}\n"
        "  integration: {alert_usd: 0.5}\n"
        "  pr-validation: {llm_mode: mock}\n"
        "  cost-report: {alert_usd: 20}\n"
    )
    assert alert_thresholds(config) == ({"nightly": 5.0, "integration": 0.5}, 20.0)
