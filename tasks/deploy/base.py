"""The interface every runtime backend implements, and the types they share.

Like the services (``tasks/services/base.py``, after pre-commit's
``lang_base.py``): this module holds only the protocol and its data;
``all_runtimes`` is the registry and each backend is a small module that
imports this one and the core, never another backend nor the registry.

A runtime installs a release (once per release, never rebuilt between
environments), starts one replica of it on a port, tells whether a replica
still runs and stops it. Routing is not its business: the proxy
(``tasks/deploy/proxy.py``) sends traffic to the ports it reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from cicd.config_deploy import DeployEnvironment


@dataclass(frozen=True)
class Release:
    """One artifact: the wheel of one commit, promoted as it is."""

    name: str
    version: str
    commit: str
    ref: str
    wheel: str
    sha256: str

    @property
    def id(self) -> str:
        # The version alone does not tell two commits apart (a branch is not a tag).
        return f"{self.name}-{self.version}-{self.sha256[:12]}"

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Release:
        return cls(**{k: str(data[k]) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Replica:
    """One running copy of a release: its port and its process group."""

    release: str
    port: int
    pid: int
    # /proc start time: a recorded pid that was reused by another program is not ours.
    start_time: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Replica:
        started = data.get("start_time")
        return cls(
            release=str(data["release"]),
            port=int(data["port"]),
            pid=int(data["pid"]),
            start_time=None if started is None else int(started),
        )


def fill(argv: list[str], values: dict[str, str]) -> list[str]:
    """Placeholders filled in each argument (already checked by the schema)."""
    out = []
    for arg in argv:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", value)
        out.append(arg)
    return out


class Runtime(Protocol):
    name: str

    def install(self, release: Release, releases_dir: Path) -> Path:
        """Make ``release`` runnable (its own virtualenv, an image); idempotent."""
        ...

    def start(
        self,
        release: Release,
        installed: Path,
        port: int,
        settings: DeployEnvironment,
        log_dir: Path,
    ) -> Replica:
        """Start one replica listening on ``port``; returns at once (health is checked apart)."""
        ...

    def running(self, replica: Replica) -> bool: ...

    def stop(self, replica: Replica) -> None: ...
