"""The checkout step (``actions/checkout``) as a Prefect task: retried on
infrastructure errors (network, server), never on bad input."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cicd.errors import retry_on_infrastructure
from cicd.git import Checkout, ahead, checkout


@task(
    name="checkout",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_on_infrastructure,
    # Prefect's default policy keys on inputs, task source and the flow run id: a
    # flow run that runs again (requeued by flows/slot_wait.py, rescheduled after a
    # crash by deployments/crash_recovery.py) would get the first attempt's
    # Checkout back, whose workspace that attempt deleted or still uses. Every
    # attempt clones its own (https://docs.prefect.io/v3/concepts/caching#cache-policies).
    cache_policy=NO_CACHE,
)
def checkout_task(repo: str, ref: str) -> Checkout:
    # Started by `cicd run` while Prefect was creating this run (cicd/git/ahead.py).
    result = ahead.take(repo, ref) or checkout(repo, ref)
    if result.healed:
        # In the run's log, not only the worker's: why this run cloned from scratch.
        get_run_logger().warning("mirror %s rebuilt: %s", result.mirror, result.healed)
    return result
