"""Reclaim what dead owners left: the processes and paths of their claims.

Run at the start of every ``cicd`` command (cheap: a directory listing and one
non-blocking ``flock`` per record) and by ``cicd gc``. A claim is reclaimed
only when :func:`cicd.ownership.owner_is_gone` says so, and its directories
only once every process it names is proven gone: killed here, or no longer
existing where we can see. A process recorded in another PID namespace is
found by its namespace inode and its PID there (``NSpid`` in
proc_pid_status(5)); when we cannot see that namespace (we are not in the
initial one) and it is not ours, the claim is left for a reaper that can.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cicd import command, ownership
from cicd.ownership import ProcessRef, Record

logger = logging.getLogger("cicd.reclaim")

RECLAIM_GRACE_SECONDS = 5.0
NOTE_NAME = "reclaimed.json"


@dataclass(frozen=True)
class Reclaimed:
    """One claim of a dead owner: what was (or, with ``dry_run``, would be) done."""

    token: str
    kind: str
    owner: str
    killed: tuple[int, ...]
    removed: tuple[str, ...]
    left: str = ""  # why it was left alone, when it was

    def to_json(self) -> dict[str, object]:
        return {
            "token": self.token,
            "kind": self.kind,
            "owner": self.owner,
            "killed": list(self.killed),
            "removed": list(self.removed),
            **({"left": self.left} if self.left else {}),
        }


def _status_field(pid: str, name: str) -> list[str]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return line.split()[1:]
    except OSError:
        pass
    return []


def local_pid(ref: ProcessRef) -> int | None:
    """The PID of ``ref`` as this process sees it, or None when it is gone.

    Raises ``LookupError`` when its PID namespace is not ours and might be
    out of our sight (we are not in the initial namespace): then nothing
    proves it gone.
    """
    mine = ownership.pid_namespace()
    if ref.pid_ns is None or ref.pid_ns == mine:
        return ref.pid
    found_namespace = False
    for name in os.listdir("/proc"):
        if not name.isdigit() or ownership.pid_namespace(name) != ref.pid_ns:
            continue
        found_namespace = True
        nspid = _status_field(name, "NSpid")
        if nspid and nspid[-1] == str(ref.pid):
            return int(name)
    if found_namespace or mine == ownership.INITIAL_PID_NAMESPACE:
        return None  # we see every process of that namespace: it is not there
    raise LookupError(f"PID namespace {ref.pid_ns} is out of sight")


def _is_the_one(pid: int, ref: ProcessRef) -> bool:
    # No start time recorded (it had exited already): nothing proves a PID is it.
    if ref.start_time is None or ownership.start_time(pid) != ref.start_time:
        return False
    if ref.marker:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if ref.marker not in cmdline:
            return False
    if ref.group:
        try:
            return os.getpgid(pid) == pid
        except ProcessLookupError:
            return False
    return True


def _stop(ref: ProcessRef, dry_run: bool) -> int | None:
    """Kill ``ref`` (its group) if it is still the very process recorded;
    return the local PID killed. Raises LookupError when nothing can be proven."""
    pid = local_pid(ref)
    if pid is None or not _is_the_one(pid, ref):
        return None  # gone, or the PID now names a stranger: leave it be
    if dry_run:
        return pid
    if ref.group:
        # SIGTERM first (Neo4j and uvicorn stop cleanly on it), SIGKILL after grace.
        if not command.terminate_group(pid, grace=RECLAIM_GRACE_SECONDS):
            raise LookupError(f"process group {pid} did not exit after SIGKILL")
    else:
        os.kill(pid, 9)
    return pid


def _expand(owned: str) -> list[Path]:
    """A recorded path, or the matches of a pattern in its last part
    (``ws-1.site-py*``: what grows beside a workspace later)."""
    path = Path(owned)
    if "*" in path.name:
        return sorted(path.parent.glob(path.name))
    return [path]


def _remove(path: Path, marker: str) -> bool:
    if not path.exists() and not path.is_symlink():
        return False
    if marker and path.is_dir() and not (path / marker).is_file():
        return False  # not (or no longer) the directory its owner made
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return True


def _owner(record: Record) -> str:
    return f"pid {record.owner_pid} on {record.host.hostname}"


def _reclaim_one(path: Path, record: Record, directory: Path, dry_run: bool) -> Reclaimed | None:
    with ownership.taken(record, directory) as held:
        if not held:
            return None  # its owner lives (or another reaper just took it)
        killed: list[int] = []
        try:
            for ref in record.processes:
                pid = _stop(ref, dry_run)
                if pid is not None:
                    killed.append(pid)
        except LookupError as exc:
            return Reclaimed(record.token, record.kind, _owner(record), tuple(killed), (), str(exc))
        removed = []
        for owned in record.paths:
            for target in _expand(owned):
                if dry_run:
                    if target.exists():
                        removed.append(str(target))
                elif _remove(target, record.path_marker):
                    removed.append(str(target))
        if not dry_run:
            for kept in record.notes:
                note = Path(kept)
                if note.is_dir():
                    note.joinpath(NOTE_NAME).write_text(
                        json.dumps(
                            {
                                "owner": _owner(record),
                                "reclaimed": time.time(),
                                "reason": "its owner died before it finished",
                            }
                        )
                    )
            path.unlink(missing_ok=True)
            record.lock_path(directory).unlink(missing_ok=True)
        return Reclaimed(record.token, record.kind, _owner(record), tuple(killed), tuple(removed))


def reclaim(
    *,
    kinds: tuple[str, ...] | None = None,
    dry_run: bool = False,
    directory: Path | None = None,
) -> list[Reclaimed]:
    """Reclaim every claim (of ``kinds``) whose owner is provably gone."""
    where = directory or ownership.owned_dir()
    here = ownership.HostIdentity.current()
    done: list[Reclaimed] = []
    for path, record in ownership.records(where):
        if record is None:
            # Nothing in it to act on; dropped only when no live owner holds its lock.
            lock = path.with_suffix(".lock")
            if not dry_run and (not lock.exists() or ownership.lock_file_is_free(lock)):
                logger.warning("removing unreadable ownership record %s", path)
                path.unlink(missing_ok=True)
                lock.unlink(missing_ok=True)
            continue
        if kinds is not None and record.kind not in kinds:
            continue
        if not ownership.lock_judges(record, record.lock_path(where), here):
            continue  # another host's claim on a lock we cannot see: never ours to judge
        result = _reclaim_one(path, record, where, dry_run)
        if result is not None:
            if not dry_run and not result.left:
                logger.info(
                    "reclaimed %s of dead owner %s: killed %s, removed %s",
                    record.kind,
                    result.owner,
                    list(result.killed),
                    list(result.removed),
                )
            done.append(result)
    if not dry_run:
        _sweep_partials(where)
    return done


def _sweep_partials(where: Path, age: float = 3600.0) -> None:
    """Half-made files of an owner killed mid-claim: partial files (a claim
    renames its lock within microseconds, so none is in use after this long)
    and lock files whose record was never written, once their lock is free."""
    cutoff = time.time() - age
    for partial in where.glob(".*.partial"):
        try:
            if partial.stat().st_mtime < cutoff:
                partial.unlink()
        except FileNotFoundError:
            continue
    for lock in where.glob("*.lock"):
        if lock.with_suffix(".json").exists():
            continue
        try:
            if lock.stat().st_mtime < cutoff and ownership.lock_file_is_free(lock):
                lock.unlink()
        except FileNotFoundError:
            continue
