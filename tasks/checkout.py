"""The checkout step (``actions/checkout``) as a Prefect task: retried on
infrastructure errors (network, server), never on bad input."""

from __future__ import annotations

from prefect import task

from cicd.errors import retry_on_infrastructure
from cicd.git import Checkout, checkout


@task(
    name="checkout",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_on_infrastructure,
)
def checkout_task(repo: str, ref: str) -> Checkout:
    return checkout(repo, ref)
