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


class Verdict(RunInput):
    """A person's call on an inconclusive canary analysis."""

    approver: str
    proceed: bool = False
    comment: str = ""


def ask_verdict(environment: str, release: Release, reason: str, timeout: float) -> Verdict:
    """Pause until a person says whether the canary goes on (Argo Rollouts'
    inconclusive analysis pauses the rollout the same way)."""
    answer = pause_flow_run(
        wait_for_input=Verdict.with_initial_data(
            description=(
                f"Canary of {release.id} in {environment} is inconclusive: {reason}. Go on?"
            ),
            approver="",
        ),
        timeout=int(timeout),
        key=f"canary-{environment}-{release.sha256[:12]}",
    )
    return answer  # type: ignore[no-any-return]
