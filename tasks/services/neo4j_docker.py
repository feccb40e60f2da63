"""The docker backend: the official ``neo4j:5.26`` image, like GitHub Actions'
``services: neo4j: image: neo4j:5.26``.

Chosen by ``backend: auto`` whenever a Docker engine answers. It talks to the
engine with docker-py through ``prefect_docker.DockerHost().get_client()``:
prefect-docker's own container tasks are ``async def``
(https://github.com/PrefectHQ/prefect/blob/main/src/integrations/prefect-docker/prefect_docker/containers.py)
and would silently return coroutines from our sync flows.

Ports are published on 127.0.0.1 with engine-chosen host ports (no clashes
between concurrent runs), or the fixed ``port`` / ``http_port``; plugins are
the image's own ``NEO4J_PLUGINS``
(https://neo4j.com/docs/operations-manual/5/docker/plugins/). Containers
carry ``cicd-flows.service=neo4j`` plus the owning process, so
``reap_containers`` removes those of crashed flows.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cicd.errors import InfrastructureError
from tasks.services.base import LOG_TAIL_LINES, ServiceEndpoint, logger
from tasks.services.host import check_ports_free, is_alive, process_start_time
from tasks.services.neo4j_health import check_user, wait_until_healthy

if TYPE_CHECKING:
    from cicd.config import ServiceConfig

IMAGE = "neo4j"
HOST = "127.0.0.1"
LABEL_SERVICE = "cicd-flows.service"
LABEL_NAME = "cicd-flows.name"
LABEL_OWNER = "cicd-flows.owner"
BOLT = "7687/tcp"
HTTP = "7474/tcp"
STOP_GRACE_SECONDS = 30
PING_TIMEOUT_SECONDS = 3


def owner_label() -> str:
    """``host:pid:start_time`` of this process; a container is orphaned once it is gone."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"


def owner_is_gone(label: str) -> bool:
    """True only when the owner ran on this host and has exited."""
    host, _, rest = label.partition(":")
    pid_text, _, start_text = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another worker's container: not ours to judge
    start = int(start_text) if start_text.isdigit() else None
    return not is_alive(int(pid_text), start)


def container_spec(name: str, config: ServiceConfig, token: str, owner: str) -> dict[str, Any]:
    """Keyword arguments for docker-py ``containers.run``: pure, so it is testable
    on machines without an engine."""
    plugins: dict[str, str] = {}
    if config.plugins:
        plugins = {
            "NEO4J_PLUGINS": json.dumps(config.plugins),
            "NEO4J_dbms_security_procedures_unrestricted": ",".join(
                f"{plugin}.*" for plugin in config.plugins
            ),
        }
    return {
        "image": f"{IMAGE}:{config.version}",
        "name": f"cicd-neo4j-{token}",
        "detach": True,
        "environment": {
            "NEO4J_AUTH": f"{config.user}/{config.password}",
            # Same small footprint as the process backend (the image maps
            # NEO4J_a_b__c to a.b_c in neo4j.conf).
            "NEO4J_server_memory_heap_initial__size": "256m",
            "NEO4J_server_memory_heap_max__size": "512m",
            "NEO4J_server_memory_pagecache_size": "64m",
            "NEO4J_dbms_usage__report_enabled": "false",
            **plugins,
        },
        # Host port None: the engine picks a free one; loopback only.
        "ports": {BOLT: (HOST, config.port), HTTP: (HOST, config.http_port)},
        "labels": {LABEL_SERVICE: "neo4j", LABEL_NAME: name, LABEL_OWNER: owner},
    }


def published_port(attrs: dict[str, Any], container_port: str) -> int:
    bindings = (attrs.get("NetworkSettings", {}).get("Ports") or {}).get(container_port) or []
    for binding in bindings:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    raise InfrastructureError(f"the container does not publish {container_port}")


def _client() -> Any:
    from prefect_docker import DockerHost

    return DockerHost(timeout=PING_TIMEOUT_SECONDS).get_client()


def engine_answers() -> bool:
    """A Docker engine answers a ping. Cheap when there is none: no socket, no import."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        with _client() as client:
            return bool(client.ping())
    except Exception:  # DockerException, connection errors: no usable engine
        return False


class Neo4jContainer:
    """A started, healthy container (a :class:`RunningService`)."""

    def __init__(self, endpoint: ServiceEndpoint, container_id: str) -> None:
        self._endpoint = endpoint
        self.container_id = container_id
        self._stopped = False

    @property
    def endpoint(self) -> ServiceEndpoint:
        return self._endpoint

    @property
    def ident(self) -> str:
        return self.container_id

    def exit_reason(self) -> str | None:
        with _client() as client:
            container = client.containers.get(self.container_id)
            if container.status in ("exited", "dead"):
                code = container.attrs.get("State", {}).get("ExitCode")
                return f"container {container.status} with code {code}"
        return None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with _client() as client:
                raw = client.containers.get(self.container_id).logs(tail=lines)
        except Exception as exc:
            return f"(container log unavailable: {exc})"
        return bytes(raw).decode("utf-8", errors="replace").rstrip()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        remove_container(self.container_id, STOP_GRACE_SECONDS)


def remove_container(container_id: str, grace: int) -> None:
    from docker.errors import NotFound

    with _client() as client:
        try:
            container = client.containers.get(container_id)
        except NotFound:
            return
        try:
            container.stop(timeout=grace)
        finally:
            container.remove(force=True)


class Neo4jDockerBackend:
    name = "docker"

    def available(self) -> bool:
        return engine_answers()

    def unavailable_reason(self) -> str:
        # Not pinging again: callers ask only after available() said False.
        return f"no Docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')})"

    def reap_orphans(self) -> list[str]:
        return reap_containers()

    def start(self, name: str, config: ServiceConfig, run_dir: Path) -> Neo4jContainer:
        from docker.errors import DockerException, ImageNotFound

        check_user(name, config)
        check_ports_free(name, config.fixed_ports(), HOST)
        token = f"{name}-{secrets.token_hex(4)}"
        spec = container_spec(name, config, token, owner_label())
        try:
            with _client() as client:
                try:
                    client.images.get(spec["image"])
                except ImageNotFound:
                    repository, _, tag = spec["image"].partition(":")
                    client.images.pull(repository, tag=tag)
                container = client.containers.run(**spec)
                container.reload()
                attrs = container.attrs
                container_id = str(container.id)
        except DockerException as exc:
            raise InfrastructureError(f"{name}: could not start {spec['image']}: {exc}") from exc
        service = Neo4jContainer(
            ServiceEndpoint(
                name=name, host=HOST, port=published_port(attrs, BOLT),
                http_port=published_port(attrs, HTTP), user=config.user, password=config.password,
            ),
            container_id,
        )
        try:
            waited = wait_until_healthy(
                service.endpoint, timeout=config.startup_timeout,
                exited=service.exit_reason, log_tail=service.log_tail,
            )
        except BaseException:
            service.stop()
            raise
        logger.info(
            "%s: %s healthy on %s after %.1fs", name, spec["image"], service.endpoint.uri, waited
        )
        return service


def reap_containers() -> list[str]:
    """Remove our Neo4j containers whose owning process on this host is gone."""
    if not engine_answers():
        return []
    removed: list[str] = []
    with _client() as client:
        found = client.containers.list(all=True, filters={"label": f"{LABEL_SERVICE}=neo4j"})
    for container in found:
        if owner_is_gone(container.labels.get(LABEL_OWNER, "")):
            logger.warning("removing orphaned Neo4j container %s", container.name)
            remove_container(str(container.id), grace=5)
            removed.append(str(container.id))
    return removed
