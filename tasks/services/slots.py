"""How many Neo4j servers one worker runs at once: a Prefect global
concurrency limit (https://docs.prefect.io/v3/concepts/global-concurrency-limits),
created on first use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from cicd.errors import BadInput
from tasks.services.base import logger

NEO4J_LIMIT = "cicd-neo4j-servers"
DEFAULT_MAX_SERVERS = 2
MAX_SERVERS_ENV = "CICD_NEO4J_MAX_SERVERS"


def max_servers() -> int:
    raw = os.environ.get(MAX_SERVERS_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_SERVERS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise BadInput(f"{MAX_SERVERS_ENV}={raw!r}: expected a whole number >= 1")
    return value


def _ensure_limit(name: str, limit: int) -> bool:
    """Create the global concurrency limit if missing; False when there is no Prefect API.

    Without ``PREFECT_API_URL`` and outside a run, asking for a client would
    boot a temporary Prefect server just to count Neo4j servers: skip instead.
    An existing limit is left as is (an operator may have changed it).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    in_run = FlowRunContext.get() is not None or TaskRunContext.get() is not None
    if not PREFECT_API_URL.value() and not in_run:
        return False
    try:
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
            if problem is not None:
                logger.warning("no Prefect API (%s): Neo4j servers are not limited", problem)
                return False
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=limit)
                    )
                    logger.info("created global concurrency limit %s = %d", name, limit)
                except ObjectAlreadyExists:
                    pass  # a concurrent run created it first
    except Exception as exc:  # unreachable server, HTTP errors
        logger.warning("Prefect API unusable (%s): Neo4j servers are not limited", exc)
        return False
    return True


@contextmanager
def neo4j_slot(timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold one slot of the ``cicd-neo4j-servers`` limit (created with
    ``CICD_NEO4J_MAX_SERVERS``, default 2) while the block runs.

    Each server takes ~0.5 GB and most of a core while starting; on a 2-core
    worker more than two at once only makes every start slower. With no
    Prefect API at all the block simply runs, unlimited.
    """
    limit = max_servers()
    if not _ensure_limit(NEO4J_LIMIT, limit):
        yield
        return
    from prefect.concurrency.sync import concurrency

    # strict: the limit exists now, so a missing one must not silently mean "unlimited";
    # but a hiccup renewing the lease must not kill a running test suite.
    with concurrency(
        NEO4J_LIMIT,
        occupy=1,
        timeout_seconds=timeout_seconds,
        strict=True,
        raise_on_lease_renewal_failure=False,
    ):
        yield
