"""The ``record`` and ``live`` modes' upstream: the real OpenAI-compatible API,
called with the real key, its answer forwarded to the client as it arrives
(a streamed answer chunk by chunk) and kept for accounting and recording.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tasks.llm.openai_api import (
    MODELS_PATH,
    ChatRequest,
    ResponseSink,
    Usage,
    chunk_for_client,
    error_body,
    response_model,
    stream_usage,
    usage_of,
)

ERROR_BODY_CHARS = 2_000


@dataclass
class Forwarded:
    """What came back from the upstream (already written to the sink)."""

    status: int
    body: dict[str, Any] | None = None
    chunks: list[Any] | None = None
    error: str | None = None
    client_gone: bool = False
    usage: Usage | None = field(default=None)
    model: str | None = None


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or broke off; the message is safe to show."""


def _sse_events(lines: Iterator[str]) -> Iterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # "event:", "id:", "retry:" and ":" comments carry nothing we need.
    if data:
        yield "\n".join(data)


def _decode(data: str) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        return data


class Upstream:
    """The real OpenAI-compatible API, called with the real key."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout, connect=10.0)
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()

    @property
    def _client(self) -> httpx.Client:
        # One keep-alive pool for all calls; made again after close(), so a
        # stopped gateway can be started again.
        with self._http_lock:
            if self._http is None:
                self._http = httpx.Client(timeout=self._timeout)
            return self._http

    def close(self) -> None:
        with self._http_lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }

    def _mask(self, text: str) -> str:
        # An upstream may echo the key (error messages do, partly); the target
        # must never receive it, nor may a recording keep it.
        key = self._api_key
        return text.replace(key, "***") if key and key in text else text

    def models(self) -> tuple[int, dict[str, Any]]:
        try:
            response = self._client.get(self.base_url + MODELS_PATH, headers=self._headers())
            return response.status_code, json.loads(self._mask(response.text))
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise UpstreamUnavailable(
                f"{self.base_url}{MODELS_PATH}: {type(exc).__name__}"
            ) from None

    def forward(self, request: ChatRequest, sink: ResponseSink) -> Forwarded:
        body = dict(request.body)
        if request.stream:
            # Ask for usage even when the client did not: it is the only
            # source of a streamed answer's token counts.
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        url = self.base_url + request.path
        try:
            with self._client.stream("POST", url, json=body, headers=self._headers()) as response:
                if response.status_code >= 300 or not request.stream:
                    return self._whole(response, sink)
                return self._streamed(response, request, sink)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"upstream {url} failed: {type(exc).__name__}") from None

    def _whole(self, response: httpx.Response, sink: ResponseSink) -> Forwarded:
        raw = response.read()
        try:
            payload = json.loads(self._mask(raw.decode("utf-8", "replace")))
        except json.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            text = self._mask(raw.decode("utf-8", "replace"))[:ERROR_BODY_CHARS]
            payload = error_body(
                f"upstream answered HTTP {response.status_code}: {text}", "upstream_error"
            )
        error = None
        if response.status_code >= 300:
            detail = payload.get("error")
            message = detail.get("message") if isinstance(detail, dict) else detail
            error = f"upstream HTTP {response.status_code}: {message or 'no message'}"
        sink.send_json(response.status_code, payload)
        return Forwarded(
            response.status_code,
            body=payload,
            error=error,
            usage=usage_of(payload),
            model=response_model(payload),
        )

    def _streamed(
        self, response: httpx.Response, request: ChatRequest, sink: ResponseSink
    ) -> Forwarded:
        chunks: list[Any] = []
        error = None
        client_gone = False
        sink.start_stream()
        for raw in _sse_events(response.iter_lines()):
            data = self._mask(raw)
            if data == "[DONE]":
                break
            chunk = _decode(data)
            chunks.append(chunk)
            if isinstance(chunk, dict) and "error" in chunk:
                error = f"upstream stream error: {json.dumps(chunk['error'])[:ERROR_BODY_CHARS]}"
            if client_gone or not chunk_for_client(chunk, request.include_usage):
                continue
            try:
                sink.send_event(data)
            except OSError:
                # Keep reading: the tokens are spent and must still be counted.
                client_gone = True
        if not client_gone:
            try:
                sink.end_stream()
            except OSError:
                client_gone = True
        return Forwarded(
            200,
            chunks=chunks,
            error=error,
            client_gone=client_gone,
            usage=stream_usage(chunks),
            model=response_model(None, chunks),
        )
