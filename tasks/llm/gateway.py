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

import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any

from cicd.config import DEFAULT_LLM_EXPORT, LlmConfig, render_template
from cicd.errors import BadInput, ConfigError
from tasks.llm.answering import Answerer, Outcome, Refused, parse_chat
from tasks.llm.calls import CallRecord, utc_now
from tasks.llm.http_server import API_PREFIX, HandlerSink, ServerThread, handler_for
from tasks.llm.mock import MockResponder, load_fixtures
from tasks.llm.modes import MODES, UPSTREAM_MODES, Mode
from tasks.llm.openai_api import ChatRequest, Usage, error_body
from tasks.llm.prices import PriceTable, load_prices
from tasks.llm.recordings import RecordingStore
from tasks.llm.redaction import redact
from tasks.llm.upstream import Upstream, UpstreamUnavailable

logger = logging.getLogger("cicd.llm.gateway")

EXPORT_PLACEHOLDERS = frozenset({"base_url", "api_key", "host", "port", "mode"})
# How long readers of the call list wait for answers still being sent.
DRAIN_SECONDS = 10.0


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
        if mode in UPSTREAM_MODES:
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
        self._upstream = (
            Upstream(upstream_url, self._api_key, upstream_timeout)
            if mode in UPSTREAM_MODES and upstream_url
            else None
        )
        self._answerer = Answerer(
            mode,
            mock=self._mock,
            recordings=RecordingStore(recordings_dir) if recordings_dir is not None else None,
            upstream=self._upstream,
            strict_replay=strict_replay,
            api_key=self._api_key,
            client_key=self.client_key,
            spent=self._spent,
            budget_usd=budget_usd,
            budget_label=budget_label,
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
                handler_for(self), self.host, self._port, name="llm-gateway"
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
        sink = HandlerSink(handler)
        request: ChatRequest | None = None
        try:
            request = parse_chat(raw)
            outcome = self._answerer.answer(
                request, handler.headers.get("Authorization", ""), sink
            )
        except Refused as refused:
            outcome = Outcome(refused.call_status, "none", error=refused.message)
            sink.send_json(refused.status, error_body(refused.message, refused.kind))
        except (BrokenPipeError, ConnectionResetError):
            outcome = Outcome("error", "none", error="client disconnected")
        except Exception as exc:
            # A corrupt recording (ConfigError names the file) or a bug: the
            # client gets the reason, and the call is still accounted for.
            message = redact(f"{type(exc).__name__}: {exc}", [self._api_key])
            logger.exception("LLM gateway failed to answer")
            outcome = Outcome("error", "none", error=message)
            if not sink.streaming and not sink.finished:
                with suppress(OSError):
                    sink.send_json(500, error_body(message, "gateway_error"))
        self._record(self._call_record(request, outcome, sink.status, started, timestamp))

    def _call_record(
        self,
        request: ChatRequest | None,
        outcome: Outcome,
        http_status: int,
        started: float,
        timestamp: datetime,
    ) -> CallRecord:
        model = request.model if request is not None else ""
        usage = outcome.usage
        return CallRecord(
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
            http_status=http_status,
            error=redact(outcome.error, [self._api_key]) if outcome.error else None,
            stream=request.stream if request is not None else False,
            source=outcome.source,
            tokens_estimated=outcome.tokens_estimated,
            request_key=request.key if request is not None else "",
        )

    def handle_models(self, handler: BaseHTTPRequestHandler) -> None:
        sink = HandlerSink(handler)
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


def _placeholders(template: str) -> list[str]:
    return re.findall(r"{(\w+)}", template)


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
