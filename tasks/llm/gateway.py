"""The LLM gateway: an OpenAI-compatible HTTP server a test job is pointed at.

    target's tests --(OPENAI_BASE_URL, dummy key)--> gateway --(real key)--> upstream
                                                        |
                                                  CallRecord per call

It serves ``POST /v1/chat/completions`` (JSON or SSE streaming) and
``GET /v1/models`` on 127.0.0.1 in one of four modes (see modes.py): PR
runs use ``mock``, main runs ``replay`` (a cached LLM), nightly ``live``, and
``record`` refreshes the recordings. The real key stays in this process:
the target gets a per-gateway dummy key, and in the modes that spend money
only requests carrying that dummy key are forwarded.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from cicd.config import DEFAULT_LLM_EXPORT, LlmConfig, render_template
from cicd.errors import BadInput, ConfigError
from tasks.llm.budget import BudgetExceeded, check_budget
from tasks.llm.calls import CallRecord, CallSource, CallStatus, utc_now
from tasks.llm.modes import (
    CHAT_PATH,
    MODELS_PATH,
    MODES,
    ChatRequest,
    Forwarded,
    MockResponder,
    Mode,
    ResponseSink,
    Upstream,
    UpstreamUnavailable,
    Usage,
    completion_body,
    completion_chunks,
    error_body,
    estimate_usage,
    load_fixtures,
    response_model,
    serve_chunks,
    stream_usage,
    usage_of,
)
from tasks.llm.prices import PriceTable, load_prices
from tasks.llm.recordings import Recording, RecordingStore, request_key
from tasks.llm.redaction import redact

logger = logging.getLogger("cicd.llm.gateway")

API_PREFIX = "/v1"
EXPORT_PLACEHOLDERS = frozenset({"base_url", "api_key", "host", "port", "mode"})
MAX_BODY_BYTES = 20 * 1024 * 1024
# Idle keep-alive connections are dropped after this; stop() closes the rest.
CONNECTION_IDLE_SECONDS = 30.0
# How long readers of the call list wait for answers still being sent.
DRAIN_SECONDS = 10.0


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


class _Sink:
    """A :class:`ResponseSink` over the handler: JSON with Content-Length, SSE chunked."""

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


@dataclass
class _Outcome:
    status: CallStatus
    source: CallSource
    usage: Usage | None = None
    tokens_estimated: bool = False
    model: str | None = None
    error: str | None = None


class Gateway:
    """An OpenAI-compatible gateway on 127.0.0.1 recording one CallRecord per call.

    ``api_key`` is the real upstream key (live and record modes only); it is
    sent upstream and nowhere else. ``client_key`` is what the target gets
    (a random dummy by default). ``budget_usd`` stops forwarding once the
    real spend of this gateway is over it (HTTP 402), so a runaway loop in a
    nightly test cannot spend more than one call past the budget.
    """

    def __init__(
        self,
        mode: Mode,
        *,
        upstream_url: str | None = None,
        api_key: str | None = None,
        fixtures_dir: Path | None = None,
        recordings_dir: Path | None = None,
        strict_replay: bool = True,
        prices: PriceTable | None = None,
        budget_usd: float | None = None,
        budget_label: str | None = None,
        client_key: str | None = None,
        upstream_timeout: float = 120.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if mode not in MODES:
            raise BadInput(f"unknown LLM mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode in ("live", "record"):
            if not upstream_url:
                raise BadInput(f"LLM mode {mode!r} needs an upstream URL (llm.upstream)")
            if not api_key:
                raise BadInput(
                    f"LLM mode {mode!r} needs the upstream API key (llm.api_key_secret names "
                    "the Prefect Secret block holding it)"
                )
        if mode in ("replay", "record") and recordings_dir is None:
            raise BadInput(f"LLM mode {mode!r} needs a recordings directory (llm.recordings)")
        self.mode: Mode = mode
        self.upstream_url = upstream_url
        self.strict_replay = strict_replay
        self.prices = prices or load_prices()
        self.budget_usd = budget_usd
        self.budget_label = budget_label
        self.client_key = client_key or f"sk-cicd-gateway-{secrets.token_hex(12)}"
        self.host = host
        self._port = port
        self._api_key = api_key or ""
        self._mock = MockResponder(tuple(load_fixtures(fixtures_dir)) if fixtures_dir else ())
        self._recordings = RecordingStore(recordings_dir) if recordings_dir is not None else None
        self._upstream = (
            Upstream(upstream_url, self._api_key, upstream_timeout)
            if mode in ("live", "record") and upstream_url
            else None
        )
        self._calls: list[CallRecord] = []
        self._lock = threading.Lock()
        # Requests being answered: the client may hold its response before the
        # handler thread has appended the call, so readers wait for these.
        self._in_flight = 0
        self._idle = threading.Condition()
        self._warned_models: set[str] = set()
        self._server: ServerThread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> str:
        """Start serving; returns the base URL (``http://127.0.0.1:PORT/v1``)."""
        if self._server is None:
            self._server = ServerThread(
                _handler_for(self), self.host, self._port, name="llm-gateway"
            )
            logger.info("LLM gateway (%s) listening on %s", self.mode, self.base_url)
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            # Let answers being sent finish (and be recorded) before closing.
            self.wait_idle()
            self._server.stop()
            self._server = None
        if self._upstream is not None:
            self._upstream.close()

    def __enter__(self) -> Gateway:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the gateway is not running")
        return self._server.port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    # -- results ---------------------------------------------------------------

    def wait_idle(self, timeout: float = DRAIN_SECONDS) -> bool:
        """Wait until no request is being answered; False if some still are."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    @property
    def calls(self) -> list[CallRecord]:
        """Every call so far (waiting briefly for answers still being sent)."""
        self.wait_idle()
        with self._lock:
            return list(self._calls)

    @property
    def spent_usd(self) -> float:
        """Real money spent through this gateway (live and record calls)."""
        return self._spent()

    def _spent(self) -> float:
        # No waiting here: the budget check runs inside a request.
        with self._lock:
            return sum(call.spent_usd for call in self._calls)

    @property
    def would_cost_usd(self) -> float:
        """What the mock and replay answers would have cost against the real API."""
        return sum(c.cost_usd or 0.0 for c in self.calls if c.would_cost)

    def env(self, export: Mapping[str, str] | None = None) -> dict[str, str]:
        """The variables that point the target at this gateway (``LlmConfig.export``)."""
        values = {
            "base_url": self.base_url,
            "api_key": self.client_key,
            "host": self.host,
            "port": str(self.port),
            "mode": self.mode,
        }
        templates = dict(DEFAULT_LLM_EXPORT if export is None else export)
        problems = []
        for name, template in templates.items():
            unknown = sorted(set(_placeholders(template)) - EXPORT_PLACEHOLDERS)
            if unknown:
                problems.append(
                    f"field 'llm.export.{name}': unknown placeholder {{{unknown[0]}}}; "
                    f"expected one of {sorted(EXPORT_PLACEHOLDERS)}"
                )
        if problems:
            raise ConfigError("cicd.yaml", problems)
        return {name: render_template(template, values) for name, template in templates.items()}

    # -- request handling (called from the server threads) ------------------------

    def _record(self, call: CallRecord) -> None:
        with self._lock:
            self._calls.append(call)
        logger.info(
            "llm %s %s model=%s status=%s http=%d tokens=%d+%d%s cost=%s latency=%.0fms",
            call.mode,
            call.source,
            call.model,
            call.status,
            call.http_status,
            call.prompt_tokens,
            call.completion_tokens,
            "~" if call.tokens_estimated else "",
            "unpriced" if call.cost_usd is None else f"${call.cost_usd:.6f}",
            call.latency_ms,
        )

    def _price(self, model: str | None, requested: str, usage: Usage | None) -> float | None:
        if usage is None:
            return 0.0
        for name in (model, requested):
            cost = self.prices.cost(name, usage.prompt_tokens, usage.completion_tokens)
            if cost is not None:
                return cost
        if requested not in self._warned_models:
            self._warned_models.add(requested)
            logger.warning(
                "model %r is not in the price table (%s, as of %s): its calls are not priced "
                "and do not count against the budget",
                requested,
                self.prices.path,
                self.prices.as_of,
            )
        return None

    def handle_chat(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        with self._idle:
            self._in_flight += 1
        try:
            self._handle_chat(handler, raw)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _handle_chat(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        started, timestamp = time.perf_counter(), utc_now()
        sink = _Sink(handler)
        request: ChatRequest | None = None
        try:
            request = _parse_chat(raw)
            outcome = self._answer(request, handler, sink)
        except _Refused as refused:
            outcome = _Outcome(refused.call_status, "none", error=refused.message)
            sink.send_json(refused.status, error_body(refused.message, refused.kind))
        except (BrokenPipeError, ConnectionResetError):
            outcome = _Outcome("error", "none", error="client disconnected")
        except Exception as exc:
            # A corrupt recording (ConfigError names the file) or a bug: the
            # client gets the reason, and the call is still accounted for.
            message = redact(f"{type(exc).__name__}: {exc}", [self._api_key])
            logger.exception("LLM gateway failed to answer")
            outcome = _Outcome("error", "none", error=message)
            if not sink.streaming and not sink.finished:
                with suppress(OSError):
                    sink.send_json(500, error_body(message, "gateway_error"))
        model = request.model if request is not None else ""
        usage = outcome.usage
        self._record(
            CallRecord(
                timestamp=timestamp,
                mode=self.mode,
                model=model,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                cost_usd=self._price(outcome.model, model, usage),
                # Mock and recorded answers spend nothing: their price is what the
                # call would have cost against the real API.
                would_cost=outcome.source in ("mock", "recording"),
                status=outcome.status,
                http_status=sink.status,
                error=redact(outcome.error, [self._api_key]) if outcome.error else None,
                stream=request.stream if request is not None else False,
                source=outcome.source,
                tokens_estimated=outcome.tokens_estimated,
                request_key=request.key if request is not None else "",
            )
        )

    def _answer(
        self, request: ChatRequest, handler: BaseHTTPRequestHandler, sink: _Sink
    ) -> _Outcome:
        if self.mode == "mock":
            return self._answer_mock(request, sink, "ok")
        if self.mode == "replay":
            return self._answer_replay(request, sink)
        self._check_client_key(handler)
        self._check_budget()
        return self._answer_upstream(request, sink)

    def _answer_mock(
        self, request: ChatRequest, sink: ResponseSink, status: CallStatus
    ) -> _Outcome:
        answer = self._mock.answer(request)
        if request.stream:
            serve_chunks(
                sink, completion_chunks(request, answer.reply, answer.usage), request.include_usage
            )
        else:
            sink.send_json(200, completion_body(request, answer.reply, answer.usage))
        return _Outcome(status, "mock", answer.usage, tokens_estimated=True, model=request.model)

    def _answer_replay(self, request: ChatRequest, sink: ResponseSink) -> _Outcome:
        assert self._recordings is not None
        recording = self._recordings.load(request.key)
        if recording is None or recording.stream != request.stream:
            if not self.strict_replay:
                return self._answer_mock(request, sink, "miss")
            why = self._recordings.explain_miss(request.path, request.body)
            message = (
                f"replay miss: no recording for this request (key {request.key[:12]}, "
                f"model {request.model!r}); {why}. Run the pipeline with llm_mode=record "
                "to record it."
            )
            sink.send_json(404, error_body(message, "replay_miss"))
            return _Outcome("miss", "none", error=message)
        if recording.chunks is not None:
            serve_chunks(sink, recording.chunks, request.include_usage)
            usage = stream_usage(recording.chunks)
            model = response_model(None, recording.chunks)
        else:
            sink.send_json(recording.status, recording.body or {})
            usage, model = usage_of(recording.body), response_model(recording.body)
        estimated = usage is None
        if usage is None:
            # An old recording without usage: price it from an estimate.
            usage = estimate_usage(request.body, "")
        return _Outcome("ok", "recording", usage, tokens_estimated=estimated, model=model)

    def _check_client_key(self, handler: BaseHTTPRequestHandler) -> None:
        given = handler.headers.get("Authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {self.client_key}".encode()):
            raise _Refused(
                401,
                "invalid_api_key",
                "this gateway spends real money and only forwards requests carrying the key it "
                "exported to the job (OPENAI_API_KEY by default)",
            )

    def _check_budget(self) -> None:
        try:
            check_budget(self._spent(), self.budget_usd, self.budget_label)
        except BudgetExceeded as exc:
            message = f"{exc}; request not forwarded"
            raise _Refused(402, "budget_exceeded", message, "blocked") from None

    def _answer_upstream(self, request: ChatRequest, sink: _Sink) -> _Outcome:
        assert self._upstream is not None
        try:
            forwarded = self._upstream.forward(request, sink)
        except UpstreamUnavailable as exc:
            message = redact(str(exc), [self._api_key])
            if sink.streaming:
                # Headers are gone: tell the client in-band and end the stream.
                with suppress(OSError):
                    sink.send_event(json.dumps(error_body(message, "upstream_unavailable")))
                    sink.end_stream()
            else:
                sink.send_json(502, error_body(message, "upstream_unavailable"))
            return _Outcome("error", "none", error=message)
        usage = forwarded.usage
        estimated = False
        if usage is None and forwarded.status < 300:
            # An upstream that reports no usage still spent tokens: estimate
            # them from the text rather than book the call as free.
            usage = estimate_usage(request.body, _answer_text(forwarded))
            estimated = True
        error = forwarded.error or ("client disconnected" if forwarded.client_gone else None)
        if self.mode == "record" and forwarded.status < 300 and forwarded.error is None:
            self._save(request, forwarded)
        status: CallStatus = "error" if forwarded.status >= 300 or forwarded.error else "ok"
        return _Outcome(status, "upstream", usage, estimated, forwarded.model, error)

    def _save(self, request: ChatRequest, forwarded: Forwarded) -> None:
        assert self._recordings is not None
        recording = Recording(
            key=request.key,
            path=request.path,
            request=request.body,
            status=forwarded.status,
            body=forwarded.body,
            chunks=tuple(forwarded.chunks) if forwarded.chunks is not None else None,
        )
        path = self._recordings.save(recording, secrets=[self._api_key])
        logger.info("recorded %s", path.name)

    def handle_models(self, handler: BaseHTTPRequestHandler) -> None:
        sink = _Sink(handler)
        if self._upstream is not None:
            try:
                status, body = self._upstream.models()
            except UpstreamUnavailable as exc:
                sink.send_json(
                    502, error_body(redact(str(exc), [self._api_key]), "upstream_unavailable")
                )
                return
            sink.send_json(status, body)
            return
        names = dict.fromkeys(
            [*self.prices.models, *(f.model for f in self._mock.fixtures if f.model)]
        )
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": getattr(self.prices.models.get(name), "provider", "") or "cicd-gateway",
            }
            for name in names
        ]
        sink.send_json(200, {"object": "list", "data": data})


def _answer_text(forwarded: Forwarded) -> str:
    if forwarded.chunks is not None:
        parts = []
        for chunk in forwarded.chunks:
            for choice in chunk.get("choices") or [] if isinstance(chunk, dict) else []:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    parts.append(delta["content"])
        return "".join(parts)
    body = forwarded.body or {}
    try:
        return str(body["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""


class _Refused(Exception):
    """A request answered with an error before any mode handled it."""

    def __init__(
        self, status: int, kind: str, message: str, call_status: CallStatus = "error"
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.call_status: CallStatus = call_status


def _placeholders(template: str) -> list[str]:
    return re.findall(r"{(\w+)}", template)


def _parse_chat(raw: bytes) -> ChatRequest:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _Refused(
            400, "invalid_request_error", f"request body is not valid JSON ({exc})"
        ) from None
    if not isinstance(body, dict):
        raise _Refused(400, "invalid_request_error", "request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _Refused(400, "invalid_request_error", "field 'model': expected a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Refused(400, "invalid_request_error", "field 'messages': expected a non-empty list")
    return ChatRequest(path=CHAT_PATH, body=body, key=request_key(CHAT_PATH, body))


def _handler_for(gateway: Gateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "cicd-llm-gateway"
        timeout = CONNECTION_IDLE_SECONDS

        def log_message(self, format: str, *args: Any) -> None:
            # The default writes every request to stderr; the gateway logs
            # one line per call itself (without headers).
            logger.debug("%s %s", self.address_string(), format % args)

        def _not_found(self) -> None:
            _Sink(self).send_json(
                404,
                error_body(
                    f"{self.command} {self.path} is not served by the cicd LLM gateway "
                    f"(POST {API_PREFIX}{CHAT_PATH}, GET {API_PREFIX}{MODELS_PATH})",
                    "not_found",
                ),
            )

        def do_GET(self) -> None:
            if self.path.split("?")[0].rstrip("/") == API_PREFIX + MODELS_PATH:
                gateway.handle_models(self)
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
                _Sink(self).send_json(
                    411, error_body("Content-Length is required", "invalid_request_error")
                )
                return
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                _Sink(self).send_json(
                    413,
                    error_body(
                        f"request body over {MAX_BODY_BYTES} bytes", "invalid_request_error"
                    ),
                )
                return
            gateway.handle_chat(self, self.rfile.read(int(length)))

    return Handler


@contextmanager
def running_gateway(mode: Mode, **options: Any) -> Iterator[Gateway]:
    """A started gateway, stopped on exit (even when the job fails)."""
    gateway = Gateway(mode, **options)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def gateway_from_config(
    config: LlmConfig,
    mode: Mode,
    root: Path,
    *,
    api_key: str | None = None,
    prices: PriceTable | None = None,
    budget_usd: float | None = None,
    budget_label: str | None = None,
) -> Gateway:
    """A gateway for a checked-out target: fixture and recording dirs relative to ``root``."""
    fixtures_dir = None
    if config.fixtures:
        fixtures_dir = root / config.fixtures
        if not fixtures_dir.is_dir():
            raise ConfigError(
                "cicd.yaml",
                [
                    f"field 'llm.fixtures': directory {config.fixtures!r} does not exist "
                    "in the repository"
                ],
            )
    return Gateway(
        mode,
        upstream_url=config.upstream,
        api_key=api_key,
        fixtures_dir=fixtures_dir,
        recordings_dir=root / config.recordings,
        strict_replay=config.strict_replay,
        prices=prices,
        budget_usd=budget_usd,
        budget_label=budget_label,
    )
