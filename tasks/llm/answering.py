"""One chat request, answered in the gateway's mode.

:func:`parse_chat` validates the body; :class:`Answerer` writes the answer
to the sink (a fixture, a recording, or the upstream's answer as it
arrives) and returns an :class:`Outcome`, from which the gateway books the
call. Requests refused before any mode answers raise :class:`Refused`.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from tasks.llm.budget import BudgetExceeded, check_budget
from tasks.llm.calls import CallSource, CallStatus
from tasks.llm.mock import MockResponder, completion_body, completion_chunks, estimate_usage
from tasks.llm.modes import Mode
from tasks.llm.openai_api import (
    CHAT_PATH,
    ChatRequest,
    ResponseSink,
    Usage,
    error_body,
    response_model,
    serve_chunks,
    stream_usage,
    usage_of,
)
from tasks.llm.recordings import Recording, RecordingStore, request_key
from tasks.llm.redaction import redact
from tasks.llm.upstream import Forwarded, Upstream, UpstreamUnavailable

logger = logging.getLogger("cicd.llm.gateway")


@dataclass
class Outcome:
    """How a call went, for its CallRecord."""

    status: CallStatus
    source: CallSource
    usage: Usage | None = None
    tokens_estimated: bool = False
    model: str | None = None
    error: str | None = None


class Refused(Exception):
    """A request answered with an error before any mode handled it."""

    def __init__(
        self, status: int, kind: str, message: str, call_status: CallStatus = "error"
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.call_status: CallStatus = call_status


def parse_chat(raw: bytes) -> ChatRequest:
    """The request body as a :class:`ChatRequest`; :class:`Refused` (400) when malformed."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Refused(
            400, "invalid_request_error", f"request body is not valid JSON ({exc})"
        ) from None
    if not isinstance(body, dict):
        raise Refused(400, "invalid_request_error", "request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Refused(400, "invalid_request_error", "field 'model': expected a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused(400, "invalid_request_error", "field 'messages': expected a non-empty list")
    return ChatRequest(path=CHAT_PATH, body=body, key=request_key(CHAT_PATH, body))


def answer_text(forwarded: Forwarded) -> str:
    """The assistant's text in an upstream answer (whole or streamed)."""
    if forwarded.chunks is not None:
        parts = []
        for chunk in forwarded.chunks:
            for choice in chunk.get("choices") or [] if isinstance(chunk, dict) else []:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    parts.append(delta["content"])
        return "".join(parts)
    body: Any = forwarded.body or {}
    try:
        return str(body["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""


class Answerer:
    """Answers chat requests in one mode.

    ``spent`` reads the gateway's real spend so far (for the budget);
    ``client_key`` is the only key a money-spending mode accepts.
    """

    def __init__(
        self,
        mode: Mode,
        *,
        mock: MockResponder,
        recordings: RecordingStore | None,
        upstream: Upstream | None,
        strict_replay: bool,
        api_key: str,
        client_key: str,
        spent: Callable[[], float],
        budget_usd: float | None,
        budget_label: str | None,
    ) -> None:
        self.mode = mode
        self.mock = mock
        self._recordings = recordings
        self._upstream = upstream
        self._strict_replay = strict_replay
        self._api_key = api_key
        self._client_key = client_key
        self._spent = spent
        self._budget_usd = budget_usd
        self._budget_label = budget_label

    def answer(self, request: ChatRequest, authorization: str, sink: ResponseSink) -> Outcome:
        if self.mode == "mock":
            return self._answer_mock(request, sink, "ok")
        if self.mode == "replay":
            return self._answer_replay(request, sink)
        self._check_client_key(authorization)
        self._check_budget()
        return self._answer_upstream(request, sink)

    def _answer_mock(
        self, request: ChatRequest, sink: ResponseSink, status: CallStatus
    ) -> Outcome:
        answer = self.mock.answer(request)
        if request.stream:
            serve_chunks(
                sink, completion_chunks(request, answer.reply, answer.usage), request.include_usage
            )
        else:
            sink.send_json(200, completion_body(request, answer.reply, answer.usage))
        return Outcome(status, "mock", answer.usage, tokens_estimated=True, model=request.model)

    def _answer_replay(self, request: ChatRequest, sink: ResponseSink) -> Outcome:
        assert self._recordings is not None
        recording = self._recordings.load(request.key)
        if recording is None or recording.stream != request.stream:
            if not self._strict_replay:
                return self._answer_mock(request, sink, "miss")
            why = self._recordings.explain_miss(request.path, request.body)
            message = (
                f"replay miss: no recording for this request (key {request.key[:12]}, "
                f"model {request.model!r}); {why}. Run the pipeline with llm_mode=record "
                "to record it."
            )
            sink.send_json(404, error_body(message, "replay_miss"))
            return Outcome("miss", "none", error=message)
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
        return Outcome("ok", "recording", usage, tokens_estimated=estimated, model=model)

    def _check_client_key(self, authorization: str) -> None:
        expected = f"Bearer {self._client_key}".encode()
        if not secrets.compare_digest(authorization.encode(), expected):
            raise Refused(
                401,
                "invalid_api_key",
                "this gateway spends real money and only forwards requests carrying the key it "
                "exported to the job (OPENAI_API_KEY by default)",
            )

    def _check_budget(self) -> None:
        try:
            check_budget(self._spent(), self._budget_usd, self._budget_label)
        except BudgetExceeded as exc:
            message = f"{exc}; request not forwarded"
            raise Refused(402, "budget_exceeded", message, "blocked") from None

    def _answer_upstream(self, request: ChatRequest, sink: ResponseSink) -> Outcome:
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
            return Outcome("error", "none", error=message)
        usage = forwarded.usage
        estimated = False
        if usage is None and forwarded.status < 300:
            # An upstream that reports no usage still spent tokens: estimate
            # them from the text rather than book the call as free.
            usage = estimate_usage(request.body, answer_text(forwarded))
            estimated = True
        error = forwarded.error or ("client disconnected" if forwarded.client_gone else None)
        if self.mode == "record" and forwarded.status < 300 and forwarded.error is None:
            self._save(request, forwarded)
        status: CallStatus = "error" if forwarded.status >= 300 or forwarded.error else "ok"
        return Outcome(status, "upstream", usage, estimated, forwarded.model, error)

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
