"""The gate at the end of every flow: the verdict (a failed report fails the
flow), then the summary published without holding up the flow's end."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect.states import Failed

from cicd.results import PipelineFailed, PipelineReport
from tasks import deferred, progress
from tasks.reports import publish_report

# What a flow returns: its report as JSON, or a Failed state carrying PipelineFailed.
FlowOutcome = Any


def finish(report: PipelineReport) -> FlowOutcome:
    """Gate (a failed report fails the flow), then publish the summary artifacts.

    The verdict comes first and from the report alone: watchers hear it at once
    (``progress.RunFinished``), and the artifacts are sent from a thread of
    their own while the flow ends (``tasks.deferred``: awaited by readers and
    at the process's exit). A control plane that is gone loses the artifacts,
    never the verdict (`cicd run` still reports).

    The flow returns a Failed state rather than raising, so Prefect logs one
    line instead of a traceback; calling the flow still raises the
    ``PipelineFailed`` it carries, with the whole report.
    """
    outcome: FlowOutcome = report.to_json()
    if not report.passed:
        failed = PipelineFailed(report)
        outcome = Failed(message=str(failed), data=failed)
    progress.run_finished(report)
    deferred.defer(f"{report.flow}: summary publication", partial(publish_report, report))
    return outcome
