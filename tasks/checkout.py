"""The checkout step (``actions/checkout``) as a Prefect task: retried on
infrastructure errors (network, server), never on bad input."""

from __future__ import annotations

from prefect import get_run_logger, task

from cicd.errors import retry_on_infrastructure
from cicd.git import Checkout, checkout


@task(
    name="checkout",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_on_infrastructure,
)
def checkout_task(repo: str, ref: str) -> Checkout:
    result = checkout(repo, ref)
    if result.healed:
        # In the run's log, not only the worker's: why this run cloned from scratch.
        get_run_logger().warning("mirror %s rebuilt: %s", result.mirror, result.healed)
    return result
