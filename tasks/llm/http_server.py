"""The gateway's HTTP layer: a threaded loopback server, the routes it
serves, and the :class:`~tasks.llm.openai_api.ResponseSink` that writes JSON
or a server-sent-event stream onto a connection.

Nothing here knows about modes or money: the routes hand the request body
to a :class:`ChatRoutes` (the gateway) and it answers through the sink.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from tasks.llm.openai_api import CHAT_PATH, MODELS_PATH, error_body

logger = logging.getLogger("cicd.llm.gateway")

API_PREFIX = "/v1"
MAX_BODY_BYTES = 20 * 1024 * 1024
# Idle keep-alive connections are dropped after this; stop() closes the rest.
CONNECTION_IDLE_SECONDS = 30.0


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded server that can close its open keep-alive connections on stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        # The handler writes headers and body in separate sends; with Nagle on,
        # the body waits for the client's delayed ACK (~40 ms per answer).
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class ServerThread:
    """Runs a :class:`LoopbackHTTPServer` in a background thread."""

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "http",
    ) -> None:
        self._server = LoopbackHTTPServer((host, port), handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{name}-{self.port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=5)


class HandlerSink:
    """A :class:`~tasks.llm.openai_api.ResponseSink` over a request handler:
    JSON with Content-Length, SSE with chunked transfer encoding."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self._handler = handler
        self.status = 0
        self.streaming = False
        self.finished = False

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        self.status = status
        handler = self._handler
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()
        self.finished = True

    def start_stream(self) -> None:
        self.status, self.streaming = 200, True
        handler = self._handler
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        wfile = self._handler.wfile
        wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
        wfile.flush()

    def send_event(self, data: str) -> None:
        self._write_chunk(f"data: {data}\n\n".encode())

    def end_stream(self) -> None:
        self._write_chunk(b"data: [DONE]\n\n")
        self._handler.wfile.write(b"0\r\n\r\n")
        self._handler.wfile.flush()
        self.finished = True


class ChatRoutes(Protocol):
    """What answers the two routes (the gateway)."""

    def handle_chat(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None: ...

    def handle_models(self, handler: BaseHTTPRequestHandler) -> None: ...


def handler_for(routes: ChatRoutes) -> type[BaseHTTPRequestHandler]:
    """``POST /v1/chat/completions`` and ``GET /v1/models``; 404 for the rest."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "cicd-llm-gateway"
        timeout = CONNECTION_IDLE_SECONDS

        def log_message(self, format: str, *args: Any) -> None:
            # The default writes every request to stderr; the gateway logs
            # one line per call itself (without headers).
            logger.debug("%s %s", self.address_string(), format % args)

        def _not_found(self) -> None:
            HandlerSink(self).send_json(
                404,
                error_body(
                    f"{self.command} {self.path} is not served by the cicd LLM gateway "
                    f"(POST {API_PREFIX}{CHAT_PATH}, GET {API_PREFIX}{MODELS_PATH})",
                    "not_found",
                ),
            )

        def do_GET(self) -> None:
            if self.path.split("?")[0].rstrip("/") == API_PREFIX + MODELS_PATH:
                routes.handle_models(self)
            else:
                self._not_found()

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length")
            if self.path.split("?")[0].rstrip("/") != API_PREFIX + CHAT_PATH:
                if length and length.isdigit():
                    self.rfile.read(int(length))
                self._not_found()
                return
            if length is None or not length.isdigit():
                self.close_connection = True
                HandlerSink(self).send_json(
                    411, error_body("Content-Length is required", "invalid_request_error")
                )
                return
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                HandlerSink(self).send_json(
                    413,
                    error_body(
                        f"request body over {MAX_BODY_BYTES} bytes", "invalid_request_error"
                    ),
                )
                return
            routes.handle_chat(self, self.rfile.read(int(length)))

    return Handler
