"""The docker runtime: a release's wheel installed into an image, each replica
a container publishing the replica's port on 127.0.0.1.

The container is created through prefect-docker's ``DockerHost`` client
(https://github.com/PrefectHQ/prefect/tree/main/src/integrations/prefect-docker),
as the Neo4j service backend does. The specs are pure functions so that they
can be checked where no engine answers (this CI machine has none): see
``tests/test_deploy_config.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cicd.config_deploy import DeployEnvironment
from cicd.errors import InfrastructureError
from tasks.deploy.base import Release, Replica, fill

CONTAINER_WHEELS = "/wheels"
CONTAINER_PORT = 8000


def image_spec(release: Release, settings: DeployEnvironment) -> dict[str, Any]:
    """What ``docker build`` gets: a Dockerfile installing exactly the artifact."""
    wheel = Path(release.wheel).name
    dockerfile = "\n".join(
        [
            f"FROM {settings.image}",
            f"COPY {wheel} {CONTAINER_WHEELS}/{wheel}",
            f"RUN python -m pip install --no-cache-dir {CONTAINER_WHEELS}/{wheel}",
            f'LABEL org.cicd-flows.release="{release.id}" org.cicd-flows.sha256="{release.sha256}"',
        ]
    )
    return {"tag": f"cicd-release/{release.name}:{release.sha256[:12]}", "dockerfile": dockerfile}


def container_spec(release: Release, settings: DeployEnvironment, port: int) -> dict[str, Any]:
    """Keyword arguments of docker-py's ``containers.run`` for one replica."""
    argv = fill(
        list(settings.start),
        {
            "port": str(CONTAINER_PORT),
            "venv": "/usr/local",
            "python": "python",
            "release": release.id,
        },
    )
    return {
        "image": image_spec(release, settings)["tag"],
        "command": argv,
        "name": f"cicd-{release.name}-{release.sha256[:12]}-{port}",
        "detach": True,
        "auto_remove": True,
        "environment": {**settings.env, "CICD_RELEASE": release.id, "PORT": str(CONTAINER_PORT)},
        "ports": {f"{CONTAINER_PORT}/tcp": ("127.0.0.1", port)},
        "labels": {"org.cicd-flows.release": release.id},
    }


def _client() -> Any:
    from prefect_docker import DockerHost

    return DockerHost(timeout=5).get_client()


def engine_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        with _client() as client:
            return bool(client.ping())
    except Exception:  # no usable engine
        return False


class DockerRuntime:
    name = "docker"

    def install(self, release: Release, releases_dir: Path) -> Path:
        if not engine_answers():
            raise InfrastructureError("deploy runtime 'docker': no Docker engine answers here")
        spec = image_spec(release, DeployEnvironment(start=["true"]))
        context = releases_dir / release.id / "image"
        context.mkdir(parents=True, exist_ok=True)
        (context / "Dockerfile").write_text(spec["dockerfile"] + "\n")
        (context / Path(release.wheel).name).write_bytes(Path(release.wheel).read_bytes())
        with _client() as client:
            client.images.build(path=str(context), tag=spec["tag"], rm=True)
        return context

    def start(
        self,
        release: Release,
        installed: Path,
        port: int,
        settings: DeployEnvironment,
        log_dir: Path,
    ) -> Replica:
        with _client() as client:
            container = client.containers.run(**container_spec(release, settings, port))
            container.reload()
            pid = int(container.attrs["State"]["Pid"])
        return Replica(release.id, port, pid, None)

    def running(self, replica: Replica) -> bool:
        with _client() as client:
            found = client.containers.list(
                filters={"label": f"org.cicd-flows.release={replica.release}"}
            )
            return any(c.attrs["State"].get("Pid") == replica.pid for c in found)

    def stop(self, replica: Replica) -> None:
        with _client() as client:
            for c in client.containers.list(
                filters={"label": f"org.cicd-flows.release={replica.release}"}
            ):
                if c.attrs["State"].get("Pid") == replica.pid:
                    c.stop(timeout=5)
