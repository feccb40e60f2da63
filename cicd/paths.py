"""Where cicd-flows keeps state outside the repositories it works on.

Everything lives under ``$CICD_HOME`` (default ``~/.cache/cicd-flows``):
git mirrors, per-run workspaces, reusable target environments, service
downloads and run reports. Nothing is ever written into the user's checkout.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    configured = os.environ.get("CICD_HOME")
    base = Path(configured) if configured else Path.home() / ".cache" / "cicd-flows"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def mirrors() -> Path:
    """Bare git mirrors of target repositories, one per repo address."""
    return _sub("mirrors")


def workspaces() -> Path:
    """Per-run checkouts; deleted when the run ends."""
    return _sub("workspaces")


def environments() -> Path:
    """Target virtualenvs, keyed by the hash of their dependency inputs."""
    return _sub("envs")


def runs() -> Path:
    """Per-run reports (JUnit XML, coverage JSON, logs), kept after the run."""
    return _sub("runs")


def services() -> Path:
    """Service state: downloads (Neo4j jars), per-run data dirs, pid files."""
    return _sub("services")


def neo4j_distribution(version: str) -> Path:
    """The Neo4j jar cache for one version (GPLv3: fetched at set-up, never committed)."""
    configured = os.environ.get("CICD_NEO4J_HOME")
    if configured:
        return Path(configured)
    return services() / "neo4j" / version
