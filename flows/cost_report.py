"""The weekly LLM cost report: the seed's ``cost-alert.yml`` as a Prefect flow.

read the cost store -> spend per flow, model and day; trend; costliest runs; alerts
  -> markdown artifact -> notification

The report belongs to no repository, so it has no checkout to read a
``cicd.yaml`` from: ``config`` names one (a path on the worker). Its
``pipelines.cost-report.alert_usd`` is the week's threshold, every other
``pipelines.<flow>.alert_usd`` the threshold of one run of that flow, and its
``notify`` where the report goes. A parameter given to the flow wins over the file
(``run_alert_usd`` then applies to the runs of every flow).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cicd.config import NotifyConfig, PipelineConfig, load_config_file
from flows.run_names import name_current_run
from tasks.cost_report import alert_thresholds, render_markdown, summary_text, weekly_report
from tasks.llm.costs import CostStore
from tasks.notify import notify

FLOW_NAME: Final = "cost-report"


@flow(name=FLOW_NAME, log_prints=True)
def cost_report(
    end: datetime | None = None,
    week_alert_usd: float | None = None,
    run_alert_usd: float | None = None,
    webhook_url: str | None = None,
    notify_block: str | None = None,
    store_url: str | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    logger = get_run_logger()
    name_current_run(FLOW_NAME, None)  # "cost-report · 2026-12-01 06:00 UTC", event tag
    settings = load_config_file(Path(config)) if config else PipelineConfig()
    flow_alert_usd, config_week_alert_usd = alert_thresholds(settings)
    if week_alert_usd is None:
        week_alert_usd = config_week_alert_usd
    if run_alert_usd is not None:
        flow_alert_usd = {}  # the parameter is the threshold of every run
    store = CostStore(store_url)
    try:
        report = weekly_report(
            store,
            end or datetime.now(UTC),
            run_alert_usd=run_alert_usd,
            flow_alert_usd=flow_alert_usd,
            week_alert_usd=week_alert_usd,
        )
    finally:
        store.close()
    markdown = render_markdown(report)
    create_markdown_artifact(
        key="llm-cost-report", markdown=markdown, description="Weekly LLM cost report"
    )
    create_table_artifact(
        key="llm-cost-per-flow",
        table=[{"flow": f.flow, "spent_usd": round(f.spent_usd, 6)} for f in report.per_flow],
    )
    text = summary_text(report)
    delivery = notify(
        NotifyConfig(
            webhook_url=webhook_url or settings.notify.webhook_url,
            block=notify_block or settings.notify.block,
        ),
        "Weekly LLM cost report" + (" ⚠️ alerts" if report.alerts else ""),
        text,
        logger,
    )
    return {
        "flow": FLOW_NAME,
        "state": "passed",
        "spent_usd": round(report.spent_usd, 6),
        "calls": report.calls,
        "runs": report.runs,
        "alerts": [alert.message for alert in report.alerts],
        "notified": list(delivery.delivered),
        "notify_failed": list(delivery.failed),
        "markdown": markdown,
    }
