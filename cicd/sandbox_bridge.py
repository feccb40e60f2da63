"""Carry allowed TCP ports across the sandbox's network namespace, through unix sockets.

A sandboxed job has its own network namespace (``bwrap --unshare-net``): its
127.0.0.1 is not the host's, so nothing the worker serves is reachable from
it. For each port a job is allowed (its services, the LLM gateway), the
worker listens on ``<socket dir>/<port>.sock`` and connects each accepted
stream to the host's ``127.0.0.1:<port>`` (:class:`HostBridge`); inside the
sandbox this same file runs first, as a script, listening on the namespace's
``127.0.0.1:<port>`` (and ``[::1]``) and connecting each stream to the unix
socket, then it replaces itself with the job's command (:func:`main`). Unix
sockets cross network namespaces because they are named by a file: only the
directory bind-mounted into the sandbox names them (unix(7)).

Standard library only: inside the sandbox it runs with the worker's base
interpreter in isolated mode (``python -I -S``), without the project's
packages. Before the job's command starts it only binds its listeners
(``os``, ``socket``); asyncio is imported by the forwarder after the fork,
while the command is already starting, so a bridged step starts about as
fast as an unbridged one.
"""

from __future__ import annotations

import os
import socket
import sys

# Not typing.TYPE_CHECKING: importing typing costs the box's start ~30 ms (mypy
# treats any constant of this name the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable, Sequence
    from pathlib import Path

    Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

CHUNK = 65536


def socket_path(directory: Path | str, port: int) -> str:
    return os.path.join(str(directory), f"{port}.sock")


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        # Half-close: the peer learns this side is done but may still answer.
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


async def _splice(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connect: Connect
) -> None:
    import asyncio
    import contextlib

    try:
        upstream_reader, upstream_writer = await connect()
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_copy(reader, upstream_writer), _copy(upstream_reader, writer))
    finally:
        for end in (writer, upstream_writer):
            with contextlib.suppress(OSError):
                end.close()


class HostBridge:
    """The worker's side: unix sockets in ``directory`` forwarded to 127.0.0.1 ports."""

    def __init__(self, directory: Path, ports: Sequence[int], host: str = "127.0.0.1") -> None:
        import asyncio
        import threading

        self.directory = directory
        self.ports = tuple(ports)
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="sandbox-bridge", daemon=True)

    def _serve(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)
        try:
            for port in self.ports:
                self._loop.run_until_complete(self._listen(port))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        # Stopped: close the listeners and whatever streams are still open.
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _listen(self, port: int) -> None:
        import asyncio

        def connect() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
            return asyncio.open_connection(self.host, port)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _splice(reader, writer, connect)

        await asyncio.start_unix_server(handle, path=socket_path(self.directory, port))

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


def _listeners(port: int) -> list[socket.socket]:
    """Listening sockets for ``port`` on the namespace's loopback, IPv4 and (if any) IPv6."""
    sockets = []
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(128)
        except OSError:
            sock.close()
            if family == socket.AF_INET:
                raise
            continue
        sockets.append(sock)
    return sockets


def _serve_inside(directory: str, listeners: dict[int, list[socket.socket]]) -> None:
    import asyncio

    async def serve() -> None:
        for port, sockets in listeners.items():
            path = socket_path(directory, port)

            def connect(
                path: str = path,
            ) -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
                return asyncio.open_unix_connection(path)

            async def handle(
                reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter,
                connect: Connect = connect,
            ) -> None:
                await _splice(reader, writer, connect)

            for sock in sockets:
                await asyncio.start_server(handle, sock=sock)
        await asyncio.Event().wait()

    asyncio.run(serve())


def main(argv: Sequence[str]) -> int:
    """``bridge.py SOCKET_DIR PORT... -- COMMAND...``: forward, then become COMMAND.

    The listeners are bound before COMMAND starts, so its first connection
    cannot race them. The forwarder is double-forked: its parent is then the
    sandbox's init, which the kernel kills with everything else in the PID
    namespace when COMMAND ends (pid_namespaces(7)); COMMAND itself has no
    extra child to wait for.
    """
    if "--" not in argv:
        print("usage: bridge.py SOCKET_DIR PORT... -- COMMAND...", file=sys.stderr)
        return 2
    split = list(argv).index("--")
    directory, ports, command = argv[0], [int(p) for p in argv[1:split]], list(argv[split + 1 :])
    listeners = {port: _listeners(port) for port in ports}
    child = os.fork()
    if child == 0:
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            try:
                _serve_inside(directory, listeners)
            finally:
                os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
    # The listening sockets are not inheritable (PEP 446): closed in COMMAND at exec.
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"cicd sandbox: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
