"""Approval of a production deploy in the Prefect UI: the flow run pauses and
waits for typed input (``pause_flow_run(wait_for_input=...)``,
https://docs.prefect.io/v3/advanced/interactive); the approver and the comment
are recorded with the deploy.
"""

from __future__ import annotations

from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from tasks.deploy.base import Release


class Approval(RunInput):
    approver: str
    comment: str = ""
    approved: bool = True


def ask_approval(environment: str, release: Release, timeout: float) -> Approval:
    answer = pause_flow_run(
        wait_for_input=Approval.with_initial_data(
            description=f"Deploy {release.id} ({release.ref}) to {environment}?",
            approver="",
        ),
        timeout=int(timeout),
        key=f"approve-{environment}",
    )
    return answer  # type: ignore[no-any-return]
