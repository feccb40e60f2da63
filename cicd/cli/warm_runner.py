"""The warm runner of ``cicd run``: Prefect and the flows imported once, each
run a fork of that process (issue 15, "As fast as a shell script", item 2).

Why: ``import prefect`` alone takes ~2 s on Prefect 3.9.1 and the flows,
tasks and their libraries ~1 s more, paid again by every ``cicd run`` before
its first job. As with Android's zygote or ``multiprocessing``'s
``forkserver`` (https://docs.python.org/3/library/multiprocessing.html#contexts-and-start-methods),
a long-lived process imports everything once and forks a child per request;
the child runs the very code path of an in-process run
(``cicd.cli.commands.run.run_here``).

- **One runner per environment**, recorded in ``$CICD_HOME/warm-runner/``
  (``cicd/cli/warm_state.py``), keyed by the interpreter, every PREFECT_* and
  CICD_* variable, the API address, the profiles file and the project's own
  sources: Prefect reads its settings at import, so a runner is only used by
  runs that would have imported it the same way. A run under another key
  stops the recorded runner and starts its own: one per ``CICD_HOME`` (a
  runner holds ~150 MiB), not one per key ever seen.
- **Nothing runs in it.** Importing starts no thread and no event loop (it
  is checked before every fork: a fork copies only the calling thread, and
  a lock held by another thread would stay held for ever in the child,
  https://docs.python.org/3/library/os.html#os.fork). Its own state is its
  listening socket; a child closes it first.
- **The child is the run.** The light CLI (which never imports Prefect)
  sends its stdin/stdout/stderr (``socket.send_fds``), cwd, environment and
  command line; the child takes them (``dup2``: ``isatty`` and the live view
  work), leaves the runner's session, runs, and sends the exit code as soon as
  the report is printed and flushed, before Prefect's own teardown (events
  and logs sent, ``atexit``), which it then does alone with its output in
  ``runner.log``: the CLI exits at once, and a pipe reading its stdout sees
  EOF then too.
- **Signals** reach the child as messages on the socket (no PID to get
  wrong across PID namespaces): SIGINT/SIGTERM/SIGHUP to the CLI are sent on
  and the child raises them on itself, so it ends as an in-process run would
  (jobs' process groups killed, 130 or 128+N). When the CLI dies the socket
  ends and the child stops as if SIGTERMed.
- **Lifecycle**: started detached by the first run (under ``start.lock``:
  two concurrent runs start one), stopped by ``cicd down``, by a run under
  another key, or by itself after ``CICD_WARM_IDLE_SECONDS`` without a
  request and without a running child. ``CICD_WARM=off`` runs in-process.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cicd.cli import warm_state
from cicd.locking import try_file_lock

# Imported by Prefect only when a flow runs: the engines, concurrency and
# telemetry, fastapi (with starlette) for parameters, the IDNA codec of httpx.
LAZY_IMPORTS = (
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.concurrency.sync",
    "prefect.concurrency.v1.context",
    "prefect.telemetry.run_telemetry",
    "prefect.utilities.visualization",
    "fastapi.encoders",  # Flow.serialize_parameters (prefect/flows.py)
    "anyio._backends._asyncio",
    "encodings.idna",
    "stringprep",
)
# How often the runner looks at its idle time and reaps its children.
TICK = 1.0
REQUEST_TIMEOUT = 10.0


def preload() -> None:
    """Everything a run imports before its first job, imported once here."""
    import prefect  # noqa: F401  (the ~2 s this is about)
    import rich.live  # noqa: F401  (the live view, with rich.console)

    from cicd.cli import main, progress_view, run_watch  # noqa: F401
    from cicd.cli.commands import run  # noqa: F401
    from flows.registry import PIPELINES

    for entry in PIPELINES.values():
        entry.load()
    # What the first flow run imports on its own (measured: 140 modules, ~0.3 s).
    for name in LAZY_IMPORTS:
        importlib.import_module(name)
    # The CA bundle Prefect's API clients verify with, loaded once for every child.
    from cicd.cli import prefect_tls

    prefect_tls.share()
    prefect_tls.made_before_fork()


@dataclass
class Request:
    """A run handed to a forked child."""

    conn: socket.socket
    fds: list[int]
    message: dict[str, Any]
    log: Path


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class Runner:
    def __init__(self, directory: Path, key: str) -> None:
        self.directory = directory
        self.key = key
        self.pid = os.getpid()
        self.children: set[int] = set()
        self.idle = warm_state.idle_seconds()
        self.last_use = time.monotonic()
        self.listener = warm_state.new_socket()
        self.inode = 0
        self.stopping = False

    def serve(self) -> Request | None:
        """Serve until stopped (None) or, in a forked child, the child's request."""
        socket_path = self.directory / warm_state.SOCKET_FILE
        socket_path.unlink(missing_ok=True)  # a runner that was SIGKILLed
        with warm_state.socket_address(self.directory) as address:
            self.listener.bind(address)
        self.inode = socket_path.stat().st_ino
        self.listener.listen(64)
        self.listener.settimeout(TICK)
        print(f"warm runner {self.pid} ready, key {self.key}", flush=True)
        try:
            while True:
                self._reap()
                try:
                    conn, _ = self.listener.accept()
                except TimeoutError:
                    if self._idle_and_retired():
                        return None
                    continue
                self.last_use = time.monotonic()
                # A client that connects and says nothing must not hold the runner.
                conn.settimeout(REQUEST_TIMEOUT)
                try:
                    request = self._handle(conn)
                except (OSError, ValueError) as exc:  # that request only, never the runner
                    print(f"warm runner: request refused: {exc!r}", flush=True)
                    continue
                if request is not None or os.getpid() != self.pid:
                    return request  # in the child
                if self.stopping:
                    return None
        finally:
            if os.getpid() == self.pid:
                self._forget()

    def _handle(self, conn: socket.socket) -> Request | None:
        with contextlib.ExitStack() as stack:
            stack.callback(conn.close)
            if _peer_uid(conn) != os.getuid():
                return None  # the directory is 0700: not expected, never served
            message, fds = warm_state.receive_with_fds(conn, 3)
            for fd in fds:
                stack.callback(os.close, fd)
            if message is None:
                return None
            op = message.get("op")
            if op == "ping":
                warm_state.send(conn, {"key": self.key, "pid": self.pid})
            elif op == "stop":
                warm_state.send(conn, {"stopping": self.pid})
                self.stopping = True
            elif op == "run" and message.get("key") != self.key:
                # Replaced and started again under another key since the CLI's check.
                warm_state.send(conn, {"error": "the runner has another key"})
            elif op == "run" and len(fds) == 3:
                threads = threading.enumerate()
                if len(threads) != 1:
                    names = ", ".join(t.name for t in threads)
                    warm_state.send(conn, {"error": f"the runner has threads ({names})"})
                    return None
                pid = os.fork()
                if pid == 0:
                    stack.pop_all()  # the child keeps the connection and the descriptors
                    self.listener.close()
                    conn.settimeout(None)
                    return Request(conn, fds, message, self.directory / warm_state.LOG_FILE)
                self.children.add(pid)
        return None

    def _reap(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, _status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
            self.children.discard(pid)

    def _idle_and_retired(self) -> bool:
        if self.children or time.monotonic() - self.last_use < self.idle:
            return False
        # Under the start lock, or not at all: a run checking or starting a
        # runner right now will use this one or replace it.
        with try_file_lock(self.directory / "start.lock", wait=False) as held:
            if held:
                self._forget()
            return held

    def _forget(self) -> None:
        """Remove the socket and the record while they are still this runner's."""
        self.listener.close()
        path = self.directory / warm_state.SOCKET_FILE
        with contextlib.suppress(OSError):
            if path.stat().st_ino == self.inode:
                path.unlink()
        record = warm_state.read_record(self.directory)
        if record is not None and record.pid == self.pid:
            (self.directory / warm_state.RECORD_FILE).unlink(missing_ok=True)


# --- the child: one run -------------------------------------------------------------


class Verdict:
    """Sends the exit code once, as soon as it is known (or the CLI is gone)."""

    def __init__(self, conn: socket.socket, log: Path) -> None:
        self.conn = conn
        self.log = log
        self.sent = False
        self.lock = threading.Lock()

    def send(self, code: int) -> None:
        with self.lock:
            if self.sent:
                return
            self.sent = True
        sys.stdout.flush()
        sys.stderr.flush()
        # The CLI's stdout/stderr are let go first: a reader of its pipe sees
        # EOF when the CLI exits, not after this process's teardown.
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        for target in (1, 2):
            os.dup2(fd, target)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        with contextlib.suppress(OSError):
            warm_state.send(self.conn, {"exit": code})


def _follow_cli(conn: socket.socket, verdict: Verdict) -> None:
    """Signals the CLI sends on are raised here; its end before the verdict is a SIGTERM."""
    forwarded = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    while True:
        try:
            message = warm_state.receive(conn)
        except (OSError, ValueError):
            message = None
        if message is None:
            if not verdict.sent:
                os.kill(os.getpid(), signal.SIGTERM)
            return
        number = message.get("signal")
        if isinstance(number, int) and number in forwarded:
            os.kill(os.getpid(), number)


def _take_over(request: Request) -> None:
    """Become the CLI's process: its terminal, directory and environment."""
    os.setsid()  # `cicd down` stopping the runner's group must not reach a run
    for fd, target in zip(request.fds, (0, 1, 2), strict=True):
        os.dup2(fd, target)
        os.close(fd)
    if sys.stdout.isatty() and isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    message = request.message
    os.chdir(message["cwd"])
    os.environ.clear()
    os.environ.update(message["environ"])
    sys.argv = ["cicd", *message["argv"]]


def run_child(request: Request) -> int:
    """The run: the same path as in-process, exit code sent the moment it is known."""
    from cicd.cli import main, prefect_settings, run_watch
    from cicd.cli.commands import run
    from cicd.cli.error_handler import EXIT_INTERNAL, error_handler

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, main.terminate)
    signal.signal(signal.SIGHUP, main.terminate)
    _take_over(request)
    verdict = Verdict(request.conn, request.log)
    run_watch.before_exit.append(verdict.send)
    code = EXIT_INTERNAL
    try:
        warm_state.send(request.conn, {"started": os.getpid()})
        threading.Thread(
            target=_follow_cli, args=(request.conn, verdict), name="cicd-warm-cli", daemon=True
        ).start()
        prefect_settings.apply_defaults()  # masks the API's password in this process too
        argv = list(request.message["argv"])
        with error_handler(main.wants_json(argv), main.flow_name(argv)) as outcome:
            args = main.build_parser().parse_args(argv)
            outcome.code = run.run_here(
                args, outcome, request.message["repo"], request.message["api_url"]
            )
        code = outcome.code
    finally:
        verdict.send(code)
    # The CLI has its code; the artifacts are published before this child exits.
    run.publish_pending()
    return code


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "serve":
        print("usage: python -m cicd.cli.warm_runner serve DIRECTORY KEY", file=sys.stderr)
        return 2
    directory, key = Path(argv[1]), argv[2]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda signum, frame: sys.exit(0))
    preload()
    request = Runner(directory, key).serve()
    if request is None:
        return 0
    return run_child(request)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
