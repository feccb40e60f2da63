"""Run a job's commands in a box: the code under test sees its workspace and little else.

Why (issue 13, items 2 and 3): a target's test found the Prefect API's port in
``/proc/*/cmdline``, asked the API for Secret blocks with ``include_secrets``
and read the LLM key and the index token; a ``setsid`` double-forking daemon
that ignored SIGTERM outlived its job. Process groups and environment
filtering cannot stop either: the box has to be made by the kernel.

Why bubblewrap: ``bwrap`` (Debian package ``bubblewrap``) builds the box from
unprivileged Linux namespaces in one ``exec``, with no daemon and no setuid
helper, and it is what Flatpak confines applications with
(https://github.com/containers/bubblewrap, man page
https://manpages.debian.org/bookworm/bubblewrap/bwrap.1.en.html). Each step runs
as ``bwrap <options> -- <argv>`` with:

- ``--unshare-pid``: a new PID namespace with a fresh ``/proc``. The job sees only
  its own processes (no worker, no Prefect server, no other job), and when its
  init (bwrap's, which exits when the step's command does) dies, the kernel
  kills every other process in the namespace, daemons that ignore SIGTERM
  included (pid_namespaces(7): https://man7.org/linux/man-pages/man7/pid_namespaces.7.html).
  ``--die-with-parent`` ends the box when the worker's bwrap is killed (timeout).
- ``--unshare-net``: a network namespace with only its own loopback, so the
  host's 127.0.0.1 (Prefect API, other jobs' services) has no route from it
  (network_namespaces(7)). Allowed ports are carried in through unix sockets
  by :mod:`cicd.sandbox_bridge`.
- ``--unshare-user --uid 65534 --gid 65534`` with bwrap dropping every
  capability: an unprivileged user in its own user namespace
  (user_namespaces(7): https://man7.org/linux/man-pages/man7/user_namespaces.7.html).
  That uid maps to the worker's uid outside, so what the job writes in its
  workspace and reports belongs to the worker, which reads and removes it.
- ``--unshare-ipc --unshare-uts --new-session`` (no shared SysV IPC, own
  hostname, no terminal to inject input into: CVE-2017-5226).

What is visible: ``/usr`` and the ``/bin``, ``/lib*`` links read-only; from
``/etc`` only what programs need to run (TLS roots, the dynamic loader's
cache, time zone), with a generated ``passwd``, ``group`` and ``hosts``; the
target's environment and the interpreter it was made from, read-only; a
private ``/tmp`` (also ``HOME``); the workspace and the run's reports
directory read-write. Nothing else of the host: not the rest of
``$CICD_HOME`` (mirrors, other workspaces, other environments, costs), not
``/root``, not the worker's sockets.

The environment: exactly the step's (given to bwrap, which passes it on, rather
than ``--clearenv --setenv`` pairs that would put values in bwrap's command line,
readable by every local user in ``/proc/PID/cmdline``, proc(5)), less the
worker's own control-plane and secret variables (``PREFECT_*``, ``*_TOKEN``,
``*_KEY``, ``*SECRET*``, ``*PASSWORD*``) unless the step sets them itself.

``CICD_SANDBOX=auto|required|off`` chooses: ``auto`` (default) confines when
bwrap can create the namespaces here and warns once when it cannot (some
containers forbid user namespaces), ``required`` fails the step instead,
``off`` runs commands as before.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cicd import sandbox_bridge
from cicd.errors import BadInput, CicdError

logger = logging.getLogger(__name__)

SANDBOX_UID = 65534
SANDBOX_GID = 65534
MODES = ("auto", "required", "off")
# Where the box's own files (bridge script, unix sockets) appear inside it.
INSIDE_DIR = "/run/cicd-sandbox"
NAMESPACE_OPTIONS = (
    "--unshare-user",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-ipc",
    "--unshare-uts",
)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = (
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "mime.types",
    "protocols",
    "services",
)
PASSWD = f"sandbox:x:{SANDBOX_UID}:{SANDBOX_GID}:cicd-flows job:/tmp:/usr/sbin/nologin\n"
GROUP = f"sandbox:x:{SANDBOX_GID}:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
# Worker variables a job never inherits (it may still be given them explicitly).
PRIVATE_PREFIXES = ("PREFECT_", "CICD_")
PRIVATE_SUFFIXES = ("_TOKEN", "_KEY")
PRIVATE_PARTS = ("SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


class SandboxUnavailable(CicdError):
    """``CICD_SANDBOX=required`` but bubblewrap cannot confine commands here."""


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


def mode() -> str:
    value = os.environ.get("CICD_SANDBOX", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise BadInput(f"CICD_SANDBOX: expected one of {', '.join(MODES)} (got {value[:40]!r})")
    return value


def is_private(name: str) -> bool:
    upper = name.upper()
    return (
        upper.startswith(PRIVATE_PREFIXES)
        or upper.endswith(PRIVATE_SUFFIXES)
        or any(part in upper for part in PRIVATE_PARTS)
    )


def job_environment(
    env: Mapping[str, str], worker_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``env`` without the worker's private variables it merely inherited.

    A private name is kept only when the step gave it a value of its own (the
    gateway's client key as ``OPENAI_API_KEY``), not the worker's.
    """
    worker = os.environ if worker_env is None else worker_env
    return {k: v for k, v in env.items() if not (is_private(k) and worker.get(k) == v)}


@functools.cache
def _probe(bwrap: str) -> Availability:
    argv = [bwrap, *NAMESPACE_OPTIONS, *_system_mounts(), "--proc", "/proc", "--", "/bin/true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Availability(False, f"bwrap did not run: {exc}")
    if done.returncode != 0:
        detail = (done.stderr.strip() or f"exit {done.returncode}")[:300]
        return Availability(False, f"bwrap cannot create the namespaces here: {detail}")
    return Availability(True)


def _system_mounts() -> list[str]:
    options: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            options += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            options += ["--ro-bind", path, path]
    return options


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


class Sandbox:
    """A box for one step: what it may read, write and connect to.

    Use as a context manager around the command: entering stages the
    generated files and starts the bridge of ``allow_ports``; leaving stops
    the bridge and removes the staging directory.
    """

    def __init__(
        self,
        workspace: Path,
        *,
        read_only: Iterable[Path] = (),
        writable: Iterable[Path] = (),
        allow_ports: Iterable[int] = (),
    ) -> None:
        self.workspace = workspace.resolve()
        self.read_only = tuple(dict.fromkeys(p.resolve() for p in read_only))
        self.writable = tuple(dict.fromkeys(p.resolve() for p in writable))
        self.allow_ports = tuple(dict.fromkeys(int(p) for p in allow_ports))
        self._staging: Path | None = None
        self._bridge: sandbox_bridge.HostBridge | None = None

    @staticmethod
    def bwrap() -> str | None:
        return shutil.which("bwrap")

    @staticmethod
    def available() -> Availability:
        """Whether commands can be confined on this machine, and if not why."""
        bwrap = Sandbox.bwrap()
        if bwrap is None:
            return Availability(False, "bubblewrap is not installed (apt-get install bubblewrap)")
        return _probe(bwrap)

    def __enter__(self) -> Sandbox:
        # Short and outside the workspace: unix socket paths are limited to
        # 108 bytes (unix(7)), and the job must not be able to replace them.
        self._staging = Path(tempfile.mkdtemp(prefix="cicd-sb-"))
        for name, text in (("passwd", PASSWD), ("group", GROUP), ("hosts", HOSTS)):
            (self._staging / name).write_text(text)
        (self._staging / "sockets").mkdir()
        if self.allow_ports:
            self._bridge = sandbox_bridge.HostBridge(self._staging / "sockets", self.allow_ports)
            try:
                self._bridge.start()
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bridge is not None:
            self._bridge.stop()
            self._bridge = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def mounts(self) -> list[str]:
        if self._staging is None:
            raise RuntimeError("Sandbox.wrap() needs the sandbox entered: with Sandbox(...) as box")
        staging = self._staging
        options = _system_mounts()
        for entry in ETC_ENTRIES:
            options += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
        for name in ("passwd", "group", "hosts"):
            options += ["--ro-bind", str(staging / name), f"/etc/{name}"]
        options += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
        # Our interpreter runs the bridge; the target's was made from it or another.
        prefixes = [Path(sys.base_prefix).resolve()] if self.allow_ports else []
        for path in (*prefixes, *self.read_only):
            options += ["--ro-bind", str(path), str(path)]
        for path in (*self.writable, self.workspace):
            options += ["--bind", str(path), str(path)]
        bridge = Path(sandbox_bridge.__file__).resolve()
        options += ["--ro-bind", str(bridge), f"{INSIDE_DIR}/bridge.py"]
        options += ["--ro-bind", str(staging / "sockets"), f"{INSIDE_DIR}/sockets"]
        # The box's own root (a tmpfs bwrap made) read-only too: new files go
        # to the workspace or /tmp, nowhere that looks like the host.
        options += ["--remount-ro", "/"]
        return options

    def wrap(
        self, argv: Sequence[str], env: Mapping[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        """``argv`` as a bwrap command line, and the environment to start it with."""
        bwrap = self.bwrap()
        if bwrap is None:
            raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap)")
        options = [
            *NAMESPACE_OPTIONS,
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_GID),
            "--hostname",
            "cicd-job",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            *self.mounts(),
            "--chdir",
            str(self.workspace),
        ]
        command = [str(a) for a in argv]
        if self.allow_ports:
            python = str(Path(sys.executable).resolve())
            ports = [str(p) for p in self.allow_ports]
            bridge = f"{INSIDE_DIR}/bridge.py"
            command = [python, "-I", "-S", bridge, f"{INSIDE_DIR}/sockets", *ports, "--", *command]
        environ = job_environment(env)
        environ["HOME"] = "/tmp"
        environ["TMPDIR"] = "/tmp"
        return [bwrap, *options, "--", *command], environ


def _warn_unconfined(reason: str) -> None:
    if not getattr(_warn_unconfined, "warned", False):
        _warn_unconfined.warned = True  # type: ignore[attr-defined]
        logger.warning("commands run without a sandbox (CICD_SANDBOX=auto): %s", reason)


@contextlib.contextmanager
def confined(
    sandbox: Sandbox, argv: Sequence[str], env: Mapping[str, str]
) -> Iterator[tuple[list[str], dict[str, str]]]:
    """``sandbox.wrap(argv, env)`` when the mode and the machine allow it, else ``argv`` as is.

    With ``CICD_SANDBOX=auto`` and no way to confine, the worker's private
    variables are still dropped from ``env``.
    """
    chosen = mode()
    if chosen == "off":
        yield list(argv), dict(env)
        return
    availability = Sandbox.available()
    if not availability.ok:
        if chosen == "required":
            raise SandboxUnavailable(f"CICD_SANDBOX=required: {availability.reason}")
        _warn_unconfined(availability.reason)
        yield list(argv), job_environment(env)
        return
    # bwrap reports a missing program as its own exit 1; keep the usual 127.
    program = str(argv[0])
    if shutil.which(program, path=env.get("PATH")) is None:
        raise FileNotFoundError(f"No such file or directory: {program!r}")
    with sandbox:
        yield sandbox.wrap(argv, env)


def kill_note() -> str:
    """What a timed-out step's report may truthfully say was killed.

    Only the PID namespace takes every process with it; without the box a
    ``setsid`` daemon has left the process group before it was killed.
    """
    try:
        confining = mode() != "off" and Sandbox.available().ok
    except BadInput:
        confining = False
    if confining:
        return "its sandbox was killed with every process in it"
    return "process group killed (processes that left it may survive: not sandboxed)"
