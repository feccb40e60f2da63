"""How many Neo4j servers one worker runs at once: a Prefect global
concurrency limit (https://docs.prefect.io/v3/concepts/global-concurrency-limits),
created on first use; and who has a fixed port (``services.<name>.port``):
one file lock per port, so runs that want 7687 take turns instead of failing
half-way, while servers on free ports keep running side by side.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cicd.env_numbers import whole_number
from cicd.errors import InfrastructureError
from cicd.locking import try_file_lock
from tasks.services.base import logger

if TYPE_CHECKING:
    from cicd.config import ServiceConfig

NEO4J_LIMIT = "cicd-neo4j-servers"
DEFAULT_MAX_SERVERS = 2
MAX_SERVERS_ENV = "CICD_NEO4J_MAX_SERVERS"
# Ports belong to the machine, not to one CICD_HOME: the locks live in the
# system's temporary directory, shared by every cicd-flows run on this host.
PORT_LOCK_DIR = "cicd-flows-ports"
PORT_POLL_SECONDS = 0.5
PORT_WAIT_LOG_SECONDS = 60.0


def max_servers() -> int:
    return whole_number(MAX_SERVERS_ENV, DEFAULT_MAX_SERVERS, minimum=1)


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


class ServerSlotsBusy(InfrastructureError):
    """No server slot came free within the wait (``reserved_neo4j_slots``)."""


# Slots the flow run took for its jobs before starting them
# (``reserved_neo4j_slots``): a job's ``neo4j_slot`` draws on them instead of
# asking the API, so a run never waits for a slot mid-way through its jobs.
_reserved = {"capacity": 0, "in_use": 0}
_reserved_lock = threading.Lock()


def _take_reserved() -> bool:
    with _reserved_lock:
        if _reserved["in_use"] < _reserved["capacity"]:
            _reserved["in_use"] += 1
            return True
    return False


def _give_back_reserved() -> None:
    with _reserved_lock:
        _reserved["in_use"] = max(0, _reserved["in_use"] - 1)


@contextmanager
def reserved_neo4j_slots(count: int, timeout_seconds: float) -> Iterator[int]:
    """Take ``count`` server slots at once (at most the limit) for the jobs of this
    process, or raise :class:`ServerSlotsBusy` after ``timeout_seconds``.

    All at once: Prefect's ``concurrency(occupy=n)`` takes n slots in one call, so
    two runs that each need two never hold one each and wait for each other.
    Yields how many were reserved (0 without a Prefect API: nothing is limited).
    """
    limit = max_servers()
    wanted = min(count, limit)
    if wanted <= 0 or not _ensure_limit(NEO4J_LIMIT, limit):
        yield 0
        return
    from prefect.concurrency.sync import concurrency

    with ExitStack() as stack:
        try:
            stack.enter_context(
                concurrency(
                    NEO4J_LIMIT,
                    occupy=wanted,
                    timeout_seconds=timeout_seconds,
                    strict=True,
                    raise_on_lease_renewal_failure=False,
                )
            )
        except TimeoutError:
            raise ServerSlotsBusy(
                f"{wanted} of the {limit} {NEO4J_LIMIT} slot(s) did not come free "
                f"within {timeout_seconds:g}s"
            ) from None
        with _reserved_lock:
            _reserved["capacity"] += wanted
        try:
            yield wanted
        finally:
            with _reserved_lock:
                _reserved["capacity"] -= wanted


@contextmanager
def neo4j_slot(timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold one slot of the ``cicd-neo4j-servers`` limit (created with
    ``CICD_NEO4J_MAX_SERVERS``, default 2) while the block runs.

    Each server takes ~0.5 GB and most of a core while starting; on a 2-core
    worker more than two at once only makes every start slower. With no
    Prefect API at all the block simply runs, unlimited. A slot the flow run
    reserved for its jobs (``reserved_neo4j_slots``) is used first.
    """
    if _take_reserved():
        try:
            yield
        finally:
            _give_back_reserved()
        return
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


def port_lock_path(port: int) -> Path:
    return Path(tempfile.gettempdir()) / PORT_LOCK_DIR / f"{port}.lock"


@contextmanager
def port_lock(port: int, holder: str, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold ``port`` for this run until the block ends; wait while another run has it.

    A file lock (flock(2)): the kernel drops it when its holder dies, so a
    crashed run never keeps a port. The holder's description is written into
    the file for the wait message.
    """
    path = port_lock_path(port)
    started = time.monotonic()
    next_log = started
    while True:
        with try_file_lock(path, wait=False) as locked:
            if locked:
                path.write_text(f"{holder} (pid {os.getpid()})\n")
                yield
                return
        waited = time.monotonic() - started
        if timeout_seconds is not None and waited >= timeout_seconds:
            raise InfrastructureError(
                f"{holder}: port {port} still held by another run after {waited:.0f}s"
            )
        if time.monotonic() >= next_log:
            try:
                owner = path.read_text().strip() or "another run"
            except OSError:
                owner = "another run"
            logger.info("%s: waiting for port %d, held by %s", holder, port, owner)
            next_log = time.monotonic() + PORT_WAIT_LOG_SECONDS
        time.sleep(PORT_POLL_SECONDS)


@contextmanager
def service_slots(
    configs: Iterable[tuple[str, ServiceConfig]], timeout_seconds: float | None = None
) -> Iterator[None]:
    """What a job holds while its services run: their fixed ports, then a server slot.

    Ports first and in ascending order: two jobs wanting the same ports never
    wait for each other crosswise, and a job waiting for a port does not sit
    on a server slot that a job with free ports could use.
    """
    owners = {port: name for name, config in configs for port in config.fixed_ports()}
    with ExitStack() as stack:
        for port, name in sorted(owners.items()):
            stack.enter_context(port_lock(port, f"service {name!r}", timeout_seconds))
        stack.enter_context(neo4j_slot(timeout_seconds))
        yield
