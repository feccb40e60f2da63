"""Ownership that can be proven: a claim on what a run created, held by a lock.

An owner (the process that started a server, cloned a workspace, made a run
directory) takes a **claim**: an exclusive ``flock`` on a lock file, held for
as long as the thing exists, and a record beside it naming the kind, the
processes and paths to reclaim, and who holds it (host identity, PID, PID
namespace) for humans. The kernel drops a flock when the last descriptor of
its open file is closed, which happens when the owner dies of anything,
SIGKILL included, in whatever PID namespace it runs (flock(2):
https://man7.org/linux/man-pages/man2/flock.2.html). So "the owner is gone"
is decided by one question that cannot be fooled by a recycled PID or a PID
seen from another namespace: can the lock be taken now, without waiting?

Across hosts, the lock proves something only where the file system shares
locks between them. flock(2), NOTES: since Linux 2.6.12 an NFS client
emulates flock() with fcntl byte-range locks on the whole file, so NFS locks
are seen by every client, unless the mount says ``local_lock=flock``/``all``
(nfs(5): https://man7.org/linux/man-pages/man5/nfs.5.html), in which case a
lock is local to the host that took it. A record written under another kernel
(another ``boot_id``) is therefore judged gone only when the lock is free
**and** either the lock file is on NFS with shared flock locks, or it is on a
local file system of this very machine (same ``machine_id``: it rebooted,
and no process of the old boot survives). Anything else is never reclaimed:
we never delete what we cannot prove dead.

The descriptor is close-on-exec (Python's default, PEP 446) and ``subprocess``
closes the others, so a server we start never inherits the lock and keeps it
alive after its owner dies. A bare ``os.fork()`` without exec would inherit it:
nothing here forks that way.

Creation is ordered so that a reaper never sees a record without a held lock:
the lock file is created under a temporary name, locked, renamed into place,
and only then is the record written (atomically). Release removes the record
first, then the lock file, then drops the lock. The reaper (``cicd.reclaim``)
takes the lock, checks it still holds the file at that name (not an unlinked
one), reclaims, and removes both while holding it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cicd import paths

# The inode of the initial PID namespace (PROC_PID_INIT_INO in the kernel's
# include/linux/proc_ns.h): a process in it sees every process of the machine.
INITIAL_PID_NAMESPACE = 0xEFFFFFFC
# statfs(2) f_type values of NFS; see also nfs(5) for local_lock.
_NFS_TYPES = ("nfs", "nfs4")
_RECORD = ".json"
_LOCK = ".lock"


def owned_dir() -> Path:
    """Where claims live: one ``<token>.json`` record and ``<token>.lock`` each."""
    path = paths.home() / "owned"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- identity -------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class HostIdentity:
    """Which kernel and which machine wrote a record.

    ``boot_id`` changes at every boot and is shared by every container on one
    kernel (proc(5), /proc/sys/kernel/random/boot_id); ``machine_id`` names
    the installation (machine-id(5)); the hostname is for humans.
    """

    boot_id: str
    machine_id: str
    hostname: str

    @classmethod
    def current(cls) -> HostIdentity:
        return cls(
            boot_id=_read("/proc/sys/kernel/random/boot_id"),
            machine_id=_read("/etc/machine-id") or _read("/var/lib/dbus/machine-id"),
            hostname=socket.gethostname(),
        )


def pid_namespace(pid: int | str = "self") -> int | None:
    """The inode of ``pid``'s PID namespace (None when it cannot be read)."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """Start of ``pid`` in clock ticks since boot (proc_pid_stat(5) field 22);
    None when it is gone or a zombie."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


@dataclass(frozen=True)
class ProcessRef:
    """A process a claim owns, as its owner saw it. ``group``: it leads its
    own process group, and the whole group is reclaimed. ``marker``: a word
    its command line must carry before anything is killed."""

    pid: int
    start_time: int | None
    pid_ns: int | None
    group: bool = True
    marker: str = ""

    @classmethod
    def of(cls, pid: int, *, group: bool = True, marker: str = "") -> ProcessRef:
        return cls(pid, start_time(pid), pid_namespace(pid), group, marker)


@dataclass(frozen=True)
class Record:
    """What a claim owns and who holds it (the holder fields are for humans:
    only the lock decides)."""

    token: str
    kind: str
    host: HostIdentity
    owner_pid: int
    owner_pid_ns: int | None
    created: float
    processes: tuple[ProcessRef, ...] = ()
    paths: tuple[str, ...] = ()
    # Directories kept (a run's logs and reports) that get a note when reclaimed.
    notes: tuple[str, ...] = ()
    # A file each owned directory must hold before it is deleted (our mark on it).
    path_marker: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Record:
        data = json.loads(text)
        return cls(
            token=str(data["token"]),
            kind=str(data["kind"]),
            host=HostIdentity(**data["host"]),
            owner_pid=int(data["owner_pid"]),
            owner_pid_ns=data.get("owner_pid_ns"),
            created=float(data["created"]),
            processes=tuple(ProcessRef(**p) for p in data.get("processes", ())),
            paths=tuple(str(p) for p in data.get("paths", ())),
            notes=tuple(str(p) for p in data.get("notes", ())),
            path_marker=str(data.get("path_marker", "")),
            detail=dict(data.get("detail", {})),
        )

    def lock_path(self, directory: Path) -> Path:
        return directory / f"{self.token}{_LOCK}"


# --- claims -----------------------------------------------------------------------


class Claim:
    """A held claim: the lock stays taken until :meth:`release` or death."""

    def __init__(self, record: Record, directory: Path, fd: int) -> None:
        self.record = record
        self.directory = directory
        self._fd: int | None = fd
        self._guard = threading.Lock()

    @property
    def record_path(self) -> Path:
        return self.directory / f"{self.record.token}{_RECORD}"

    def update(self, **changes: Any) -> None:
        """Rewrite the record (e.g. once a server's PID is known)."""
        values = {**asdict(self.record), **changes}
        values["host"] = self.record.host
        values["processes"] = tuple(
            p if isinstance(p, ProcessRef) else ProcessRef(**p) for p in values["processes"]
        )
        values["paths"] = tuple(str(p) for p in values["paths"])
        values["notes"] = tuple(str(p) for p in values["notes"])
        self.record = Record(**values)
        _write_atomically(self.record_path, self.record.to_json())

    def release(self) -> None:
        """The owner is done (what it owned is stopped/removed). Idempotent."""
        with self._guard:
            if self._fd is None:
                return
            self.record_path.unlink(missing_ok=True)
            self.record.lock_path(self.directory).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    partial.write_text(text)
    partial.replace(path)  # a reader never sees half a record


def claim(
    kind: str,
    *,
    processes: tuple[ProcessRef, ...] = (),
    paths_owned: tuple[Path | str, ...] = (),
    notes: tuple[Path | str, ...] = (),
    path_marker: str = "",
    detail: dict[str, Any] | None = None,
    directory: Path | None = None,
) -> Claim:
    """Claim what this process is about to own; hold it until ``release()``."""
    where = directory or owned_dir()
    token = f"{kind}-{secrets.token_hex(6)}"
    final = where / f"{token}{_LOCK}"
    partial = where / f".{token}{_LOCK}.partial"
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: never contended
        os.replace(partial, final)  # the lock is on the inode: it moves with it
        record = Record(
            token=token,
            kind=kind,
            host=HostIdentity.current(),
            owner_pid=os.getpid(),
            owner_pid_ns=pid_namespace(),
            created=time.time(),
            processes=processes,
            paths=tuple(str(p) for p in paths_owned),
            notes=tuple(str(p) for p in notes),
            path_marker=path_marker,
            detail=detail or {},
        )
        held = Claim(record, where, fd)
        _write_atomically(held.record_path, record.to_json())
    except BaseException:
        partial.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        os.close(fd)
        raise
    return held


# --- is the owner gone? -------------------------------------------------------------


def _mount_of(path: Path) -> tuple[str, str]:
    """(file system type, super options) of the mount holding ``path``
    (proc_pid_mountinfo(5)); the longest mount point that contains it."""
    best = ("", "", "")
    real = str(path.resolve())
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        mount_point = left.split()[4]
        if (real == mount_point or real.startswith(mount_point.rstrip("/") + "/")) and len(
            mount_point
        ) >= len(best[0]):
            fields = right.split()
            best = (mount_point, fields[0], fields[2] if len(fields) > 2 else "")
    return best[1], best[2]


def locks_are_shared(path: Path) -> bool:
    """Whether a flock on ``path`` is seen by other hosts."""
    return nfs_shares_flock(*_mount_of(path))


def nfs_shares_flock(fstype: str, options: str) -> bool:
    """NFS without a local ``flock`` (nfs(5), ``local_lock=flock|all`` keeps
    flock locks on the client); any other file system: not known to share."""
    if fstype not in _NFS_TYPES:
        return False
    local = [o.split("=", 1)[1] for o in options.split(",") if o.startswith("local_lock=")]
    return not local or local[0] in ("none", "posix")


def lock_file_is_free(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # no lock file: nothing proves anything
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def lock_judges(record: Record, lock: Path, here: HostIdentity | None = None) -> bool:
    """Whether the lock file of ``record`` can prove its owner's death from here."""
    here = here or HostIdentity.current()
    if record.host.boot_id and record.host.boot_id == here.boot_id:
        return True  # the same kernel holds every lock on every file system
    if locks_are_shared(lock):
        return True
    # Written before this machine's last boot, on its own disk: nobody of that
    # boot is alive. A local lock says nothing about another machine.
    return (
        bool(record.host.machine_id)
        and record.host.machine_id == here.machine_id
        and (_mount_of(lock)[0] not in _NFS_TYPES)
    )


def owner_is_gone(record: Record, directory: Path | None = None) -> bool:
    """True only when the record's lock can be taken now, without waiting, and
    that lock can speak for its owner's host (see the module's docstring)."""
    lock = record.lock_path(directory or owned_dir())
    return lock_judges(record, lock) and lock_file_is_free(lock)


def records(directory: Path | None = None) -> list[tuple[Path, Record | None]]:
    """Every record (``None`` for one that cannot be read), oldest first."""
    where = directory or owned_dir()
    found: list[tuple[Path, Record | None]] = []
    for path in sorted(where.glob(f"*{_RECORD}"), key=lambda p: p.stat().st_mtime):
        try:
            found.append((path, Record.from_json(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            found.append((path, None))
    return found


@contextlib.contextmanager
def taken(record: Record, directory: Path | None = None) -> Any:
    """Take the record's lock for reclaiming; yields False when the owner holds
    it, when the file is gone, or when the name now points at another file
    (a reaper removed it meanwhile: ours would be a lock on an unlinked inode)."""
    lock = record.lock_path(directory or owned_dir())
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        yield same
    finally:
        os.close(fd)
