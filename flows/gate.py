"""The gate at the end of every flow: publish the summary, then fail the flow
when any job failed."""

from __future__ import annotations

import logging
from typing import Any

from prefect.states import Failed

from cicd.results import PipelineFailed, PipelineReport
from tasks.reports import publish_report

# What a flow returns: its report as JSON, or a Failed state carrying PipelineFailed.
FlowOutcome = Any


def finish(report: PipelineReport) -> FlowOutcome:
    """Publish the summary artifacts, then gate: a failed report fails the flow.

    The flow returns a Failed state rather than raising, so Prefect logs one
    line instead of a traceback; calling the flow still raises the
    ``PipelineFailed`` it carries, with the whole report.
    """
    try:
        publish_report(report)
    except Exception as exc:
        # The artifacts need the API; a control plane that is gone must not
        # turn the jobs' verdicts into a failed run (`cicd run` still reports).
        logging.getLogger(__name__).warning("summary artifacts not published: %s", exc)
    if not report.passed:
        failed = PipelineFailed(report)
        return Failed(message=str(failed), data=failed)
    return report.to_json()
