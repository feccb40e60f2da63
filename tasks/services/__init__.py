"""Service containers for test jobs: a real Neo4j 5.26 per suite that asks for one.

``running_services`` is what a test job wraps itself in: servers start
(healthy) before the suite, their connection variables go into the suite's
environment, and everything stops afterwards, whatever happened.
``neo4j_slot`` bounds how many servers one worker runs at once.

    base.py           the ServiceBackend / RunningService protocols, ServiceEndpoint
    all_services.py   the registry: service kind + backend name -> backend
    neo4j_process.py  backend: one local JVM (neo4j_launch.py builds it,
                      neo4j_reaping.py kills leftovers of crashed flows)
    neo4j_docker.py   backend: the neo4j:5.26 image
    neo4j_health.py   the Bolt health check both Neo4j backends use
    host.py           free ports, process identity, log tails
    provision.py      fetches the server's jars and plugins (APOC)
    class_data.py     provisioning's last step: the JVM class-data archive, once
    lifecycle.py      running_services, start_service, reap_orphans
    slots.py          neo4j_slot, the per-worker server limit; service_slots adds
                      the fixed ports' locks
"""

from tasks.services.all_services import select_backend
from tasks.services.base import RunningService, ServiceBackend, ServiceEndpoint
from tasks.services.lifecycle import reap_orphans, running_services, start_service
from tasks.services.slots import (
    DEFAULT_MAX_SERVERS,
    NEO4J_LIMIT,
    ServerSlotsBusy,
    max_servers,
    neo4j_slot,
    reserved_neo4j_slots,
    service_slots,
)

__all__ = [
    "DEFAULT_MAX_SERVERS",
    "NEO4J_LIMIT",
    "RunningService",
    "ServerSlotsBusy",
    "ServiceBackend",
    "ServiceEndpoint",
    "max_servers",
    "neo4j_slot",
    "reap_orphans",
    "reserved_neo4j_slots",
    "running_services",
    "select_backend",
    "service_slots",
    "start_service",
]
