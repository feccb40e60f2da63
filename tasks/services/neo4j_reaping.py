"""Leftover servers of crashed flows, found through their owners' claims.

Each server is a claim (``cicd.ownership``) of the process that started it:
an exclusive flock held for the server's lifetime, and a record naming the
server (PID, start time, PID namespace, the marker on its command line) and
its home. The reaper acts only when that lock can be taken, i.e. when the
owner is provably dead, whatever PID namespace or container it ran in; it
kills the server only while the PID is still the very server recorded (same
start time, our marker, leader of its own group), so an unrelated program
that reused the PID is never killed. Deciding by the owner's PID was wrong
across PID namespaces: another container's live owner looked dead from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cicd import ownership, reclaim
from cicd.ownership import Claim, ProcessRef, Record
from tasks.services.neo4j_launch import HOME_MARKER, MARKER_PROPERTY

KIND = "neo4j"
REAP_GRACE_SECONDS = reclaim.RECLAIM_GRACE_SECONDS


def claim_server(token: str, name: str, pid: int, home: Path) -> Claim:
    """Claim a started server for this process until it is stopped."""
    return ownership.claim(
        KIND,
        processes=(ProcessRef.of(pid, marker=f"{MARKER_PROPERTY}{token}"),),
        paths_owned=(home,),
        path_marker=HOME_MARKER,
        detail={"token": token, "name": name, "pid": pid, "home": str(home)},
    )


@dataclass(frozen=True)
class ServerRecord:
    """One claimed server, as its owner recorded it."""

    token: str
    name: str
    pid: int
    home: str
    claim: Record


def server_records() -> list[ServerRecord]:
    """Every Neo4j server claimed on this CICD_HOME."""
    return [
        ServerRecord(
            token=str(r.detail["token"]),
            name=str(r.detail["name"]),
            pid=int(r.detail["pid"]),
            home=str(r.detail["home"]),
            claim=r,
        )
        for _, r in ownership.records()
        if r is not None and r.kind == KIND
    ]


def reap_orphans() -> list[int]:
    """Kill servers whose owner is provably gone and remove their homes;
    return the PIDs killed (as seen from here)."""
    killed: list[int] = []
    for done in reclaim.reclaim(kinds=(KIND,)):
        killed += done.killed
    return killed
