"""What both Neo4j backends share: the admin-user rule and the health check.

A server is healthy when ``RETURN 1`` runs on database ``neo4j`` with the
configured credentials; an open Bolt port alone is not enough, the default
database comes online after the port does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cicd.errors import ConfigError, InfrastructureError
from tasks.services.base import ServiceEndpoint

if TYPE_CHECKING:
    from cicd.config import ServiceConfig

# Neo4j's only initial admin user; the neo4j image rejects any other name in
# NEO4J_AUTH, and `set-initial-password` only sets this one
# (https://neo4j.com/docs/operations-manual/5/docker/introduction/).
NEO4J_ADMIN_USER = "neo4j"
# The database a test suite uses; probing it (not just the socket) proves the
# default database is online, which happens after Bolt starts listening.
HEALTH_DATABASE = "neo4j"
POLL_SECONDS = 0.3
# Per-probe connect timeout; a healthy local server answers in milliseconds.
PROBE_TIMEOUT_SECONDS = 3.0


def check_user(name: str, config: ServiceConfig) -> None:
    """Both backends can only set the password of Neo4j's built-in admin user."""
    if config.user != NEO4J_ADMIN_USER:
        raise ConfigError(
            "cicd.yaml",
            [
                f"field 'services.{name}.user': Neo4j 5 can only set the initial password of "
                f"user {NEO4J_ADMIN_USER!r} (like NEO4J_AUTH=neo4j/<password>), got {config.user!r}"
            ],
        )


class CredentialsRejected(InfrastructureError):
    """The server answered but refused the configured user/password."""


def probe_bolt(endpoint: ServiceEndpoint, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Run ``RETURN 1`` on database ``neo4j``; raises if the server is not ready.

    A plain session, not ``execute_query``: the latter retries with growing
    back-off (seen adding ~9 s to the measured start), which hides readiness.
    """
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError

    try:
        with GraphDatabase.driver(
            endpoint.uri,
            auth=(endpoint.user, endpoint.password),
            connection_timeout=timeout,
            connection_acquisition_timeout=timeout,
        ) as driver, driver.session(database=HEALTH_DATABASE) as session:
            record = session.run("RETURN 1 AS ok").single(strict=True)
    except AuthError as exc:
        raise CredentialsRejected(
            f"{endpoint.name}: the server at {endpoint.uri} rejected user {endpoint.user!r}: {exc}"
        ) from exc
    if record["ok"] != 1:
        raise InfrastructureError(f"{endpoint.name}: RETURN 1 answered {record['ok']!r}")


def wait_until_healthy(
    endpoint: ServiceEndpoint,
    *,
    timeout: float,
    exited: Callable[[], str | None],
    log_tail: Callable[[], str],
    poll: float = POLL_SECONDS,
) -> float:
    """Poll :func:`probe_bolt` until it succeeds; return the seconds waited.

    ``exited`` returns why the server is gone (or ``None`` while it runs), so a
    crashed server fails in one poll instead of at the deadline.
    """
    start = time.monotonic()
    deadline = start + timeout
    last_error: BaseException | None = None
    while True:
        gone = exited()
        if gone is not None:
            raise InfrastructureError(
                f"{endpoint.name}: the server stopped before it was healthy ({gone}).\n"
                f"--- server log (last lines) ---\n{log_tail()}"
            )
        try:
            probe_bolt(endpoint)
            return time.monotonic() - start
        except CredentialsRejected as exc:
            raise InfrastructureError(
                f"{exc}\n--- server log (last lines) ---\n{log_tail()}"
            ) from exc
        except Exception as exc:  # ServiceUnavailable, DatabaseUnavailable, OSError, ...
            last_error = exc
        if time.monotonic() >= deadline:
            raise InfrastructureError(
                f"{endpoint.name}: not healthy after {timeout:.0f}s "
                f"(last probe: {type(last_error).__name__}: {last_error}).\n"
                f"--- server log (last lines) ---\n{log_tail()}"
            )
        time.sleep(poll)


# What a test suite typically runs: writes, reads, an index, a merge, a delete.
# The class-data writer runs them so the archive holds the Cypher runtime's classes.
WARM_UP_QUERIES = (
    "CREATE (:Warm {id: 1})-[:TO]->(:Warm {id: 2})",
    "CREATE INDEX warm_id IF NOT EXISTS FOR (n:Warm) ON (n.id)",
    "MATCH (a:Warm)-[r:TO]->(b) WHERE a.id < $limit RETURN a.id, b.id, type(r)",
    "MERGE (n:Warm {id: 3}) ON CREATE SET n.created = timestamp() RETURN n",
    "UNWIND range(1, 100) AS i WITH i WHERE i % 2 = 0 RETURN collect(i) AS even",
    "MATCH (n:Warm) DETACH DELETE n",
    "DROP INDEX warm_id IF EXISTS",
)


def warm_up(endpoint: ServiceEndpoint) -> None:
    """Run :data:`WARM_UP_QUERIES` (through the driver, as a test suite would)."""
    from neo4j import GraphDatabase

    with GraphDatabase.driver(endpoint.uri, auth=(endpoint.user, endpoint.password)) as driver:
        for query in WARM_UP_QUERIES:
            driver.execute_query(query, {"limit": 10}, database_=HEALTH_DATABASE)
