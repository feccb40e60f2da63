"""What runs where: one JSON state file per environment, and the history of
every deploy and rollback.

The state file is rewritten atomically (a temporary file, fsync, rename) before
every switch of the proxy, with the routing about to be applied: a deploy
killed at any point leaves a file saying what was live, what was being
deployed and which replicas exist, so the next run can roll it back
(``tasks/deploy/rollback.py``) and the proxy is never left half-switched.

    $CICD_HOME/deploy/<project>/<environment>/state.json
    $CICD_HOME/deploy/<project>/<environment>/nginx/     (the proxy's prefix)
    $CICD_HOME/deploy/<project>/releases/<release>/venv  (one per artifact)
    $CICD_HOME/deploy/history.jsonl                      (every deploy and rollback)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cicd import paths
from cicd.errors import BadInput
from cicd.locking import file_lock
from tasks.deploy.base import Release, Replica


def deploy_root() -> Path:
    return paths.home() / "deploy"


def environment_dir(project: str, environment: str) -> Path:
    return deploy_root() / project / environment


def releases_dir(project: str) -> Path:
    return deploy_root() / project / "releases"


def atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class ReplicaSet:
    release: Release
    replicas: list[Replica] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [r.port for r in self.replicas]

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release.to_json(), "replicas": [r.to_json() for r in self.replicas]}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ReplicaSet | None:
        if not data:
            return None
        return cls(
            Release.from_json(data["release"]), [Replica.from_json(r) for r in data["replicas"]]
        )


@dataclass
class EnvironmentState:
    """One environment: its proxy, the live set, a deploy in progress, a standby set."""

    project: str
    environment: str
    settings: dict[str, Any]
    proxy_port: int
    proxy_pid: int | None = None
    proxy_start_time: int | None = None
    proxy_generation: int = 0
    live: ReplicaSet | None = None
    # A deploy in progress: the candidate set and the routing being applied.
    pending: ReplicaSet | None = None
    phase: str = "idle"
    routing: list[tuple[int, int]] = field(default_factory=list)
    # Blue-green keeps the previous set running for an instant rollback.
    standby: ReplicaSet | None = None
    # The release before ``live`` (what a rollback by hand restores).
    previous: Release | None = None

    @property
    def path(self) -> Path:
        return environment_dir(self.project, self.environment) / "state.json"

    def save(self) -> None:
        atomic_write_json(
            self.path,
            {
                "project": self.project,
                "environment": self.environment,
                "settings": self.settings,
                "proxy": {
                    "port": self.proxy_port,
                    "pid": self.proxy_pid,
                    "start_time": self.proxy_start_time,
                    "generation": self.proxy_generation,
                },
                "live": self.live.to_json() if self.live else None,
                "pending": self.pending.to_json() if self.pending else None,
                "phase": self.phase,
                "routing": [list(pair) for pair in self.routing],
                "standby": self.standby.to_json() if self.standby else None,
                "previous": self.previous.to_json() if self.previous else None,
                "saved_at": time.time(),
            },
        )

    @classmethod
    def load(cls, project: str, environment: str) -> EnvironmentState | None:
        path = environment_dir(project, environment) / "state.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        proxy = data["proxy"]
        previous = data.get("previous")
        return cls(
            project=data["project"],
            environment=data["environment"],
            settings=data["settings"],
            proxy_port=int(proxy["port"]),
            proxy_pid=proxy.get("pid"),
            proxy_start_time=proxy.get("start_time"),
            proxy_generation=int(proxy.get("generation", 0)),
            live=ReplicaSet.from_json(data.get("live")),
            pending=ReplicaSet.from_json(data.get("pending")),
            phase=data.get("phase", "idle"),
            routing=[(int(p), int(w)) for p, w in data.get("routing", [])],
            standby=ReplicaSet.from_json(data.get("standby")),
            previous=Release.from_json(previous) if previous else None,
        )


def projects_with(environment: str) -> list[str]:
    root = deploy_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / environment / "state.json").is_file())


def find_project(environment: str, project: str | None) -> str:
    """The project whose ``environment`` is meant: named, or the only one there is."""
    if project is not None:
        return project
    found = projects_with(environment)
    if len(found) != 1:
        raise BadInput(
            f"environment {environment!r}: "
            + (
                f"several projects deploy there ({', '.join(found)}); name one with --project"
                if found
                else "nothing was ever deployed there"
            )
        )
    return found[0]


# --- history ---------------------------------------------------------------------


def history_path() -> Path:
    return deploy_root() / "history.jsonl"


def record(entry: dict[str, Any]) -> None:
    """Append one deploy or rollback (with its reason) to the history."""
    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), **entry}, sort_keys=True)
    with file_lock(path.with_name(path.name + ".lock")), path.open("a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def history(project: str | None = None, environment: str | None = None) -> list[dict[str, Any]]:
    path = history_path()
    if not path.is_file():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        e
        for e in entries
        if (project is None or e.get("project") == project)
        and (environment is None or e.get("environment") == environment)
    ]


def passed(project: str, environment: str, sha256: str) -> bool:
    """Whether this artifact was deployed to ``environment`` successfully and
    not rolled back from since."""
    ok = False
    for e in history(project, environment):
        if e.get("action") == "deploy" and e.get("release", {}).get("sha256") == sha256:
            ok = ok or e.get("outcome") == "success"
        elif e.get("action") == "rollback" and e.get("from_sha256") == sha256:
            ok = False  # rolled back from it afterwards (monitoring, by hand)
    return ok
