"""How each gateway mode produces an answer, free of the HTTP server.

* mock: a fixture reply (matched on the last user message) or a reply
  derived from the request hash; token counts estimated at ~4 characters
  per token so "what it would have cost" can still be priced.
* replay: the recorded response for the exact request (recordings.py).
* record / live: the upstream's response, forwarded as it arrives
  (:class:`Upstream`); record also keeps it.

Answers are written to a :class:`ResponseSink` (the gateway's handler), so
a streamed upstream answer reaches the client chunk by chunk.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from cicd.config import load_yaml
from cicd.errors import ConfigError
from tasks.llm.recordings import last_user_message, message_text

Mode = Literal["mock", "replay", "record", "live"]
MODES: tuple[Mode, ...] = ("mock", "replay", "record", "live")
CHAT_PATH = "/chat/completions"
MODELS_PATH = "/models"
FIXTURE_SUFFIXES = (".yaml", ".yml", ".json")
CHARS_PER_TOKEN = 4
# OpenAI documents a few tokens of framing per chat message (role, separators).
MESSAGE_OVERHEAD_TOKENS = 4
ERROR_BODY_CHARS = 2_000


class ResponseSink(Protocol):
    """Where an answer goes: JSON in one piece, or an SSE stream of ``data:`` events."""

    def send_json(self, status: int, body: dict[str, Any]) -> None: ...

    def start_stream(self) -> None: ...

    def send_event(self, data: str) -> None: ...

    def end_stream(self) -> None: ...


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completion request as the client sent it."""

    path: str
    body: dict[str, Any]
    key: str

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def to_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """An error in the shape OpenAI clients parse and show."""
    return {"error": {"message": message, "type": kind, "code": code or kind, "param": None}}


def usage_of(payload: Any) -> Usage | None:
    """Usage from a response body or chunk: OpenAI's ``usage`` or Groq's ``x_groq.usage``."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        groq = payload.get("x_groq")
        usage = groq.get("usage") if isinstance(groq, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def stream_usage(chunks: Sequence[Any]) -> Usage | None:
    """The usage of a streamed answer: the last chunk that carries one (the final chunk)."""
    for chunk in reversed(chunks):
        usage = usage_of(chunk)
        if usage is not None:
            return usage
    return None


def response_model(body: Any, chunks: Sequence[Any] = ()) -> str | None:
    for payload in (body, *chunks):
        if isinstance(payload, dict) and isinstance(payload.get("model"), str):
            return str(payload["model"])
    return None


def is_usage_only_chunk(chunk: Any) -> bool:
    """The extra final chunk ``stream_options.include_usage`` adds (no choices)."""
    return isinstance(chunk, dict) and not chunk.get("choices") and usage_of(chunk) is not None


def chunk_for_client(chunk: Any, include_usage: bool) -> bool:
    # The gateway always asks the upstream for usage (it needs it for the
    # cost); a client that did not ask must not get the extra chunk.
    return include_usage or not is_usage_only_chunk(chunk)


def encode_chunk(chunk: Any) -> str:
    return chunk if isinstance(chunk, str) else json.dumps(chunk, separators=(",", ":"))


def serve_chunks(sink: ResponseSink, chunks: Sequence[Any], include_usage: bool) -> None:
    sink.start_stream()
    for chunk in chunks:
        if chunk_for_client(chunk, include_usage):
            sink.send_event(encode_chunk(chunk))
    sink.end_stream()


# --- mock -------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """~4 characters per token, at least one: deterministic, close enough to price."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def estimate_usage(body: dict[str, Any], reply: str) -> Usage:
    messages = body.get("messages")
    prompt = sum(
        estimate_tokens(message_text(m)) + MESSAGE_OVERHEAD_TOKENS
        for m in (messages if isinstance(messages, list) else [])
    )
    return Usage(prompt, estimate_tokens(reply))


@dataclass(frozen=True)
class Fixture:
    """One canned answer: ``reply`` when the last user message matches."""

    reply: str
    match: str | None = None
    regex: re.Pattern[str] | None = None
    model: str | None = None
    source: str = ""

    def matches(self, body: dict[str, Any]) -> bool:
        if self.model is not None and body.get("model") != self.model:
            return False
        question = last_user_message(body)
        if self.regex is not None:
            return self.regex.search(question) is not None
        return self.match is not None and self.match in question


def _fixture(entry: Any, where: str, source: str, problems: list[str]) -> Fixture | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected a mapping with 'match' or 'regex' and 'reply'")
        return None
    unknown = sorted(set(entry) - {"match", "regex", "reply", "model"})
    if unknown:
        problems.append(
            f"{where}.{unknown[0]}: unknown field (expected match, regex, reply, model)"
        )
    reply, match, pattern, model = (entry.get(k) for k in ("reply", "match", "regex", "model"))
    if not isinstance(reply, str):
        problems.append(f"{where}.reply: expected a string, got {reply!r}")
    if (match is None) == (pattern is None):
        problems.append(f"{where}: give exactly one of 'match' (substring) or 'regex'")
    if match is not None and (not isinstance(match, str) or not match):
        problems.append(f"{where}.match: expected a non-empty string, got {match!r}")
    if model is not None and not isinstance(model, str):
        problems.append(f"{where}.model: expected a string, got {model!r}")
    compiled = None
    if pattern is not None:
        try:
            compiled = re.compile(str(pattern))
        except re.error as exc:
            problems.append(f"{where}.regex: invalid regular expression {pattern!r} ({exc})")
    if problems:
        return None
    return Fixture(reply=str(reply), match=match, regex=compiled, model=model, source=source)


def parse_fixtures(text: str, source: str) -> list[Fixture]:
    """A fixture file: a YAML/JSON list of entries, or a mapping with an ``answers`` list."""
    data = load_yaml(text, source, "YAML/JSON")  # YAML is a superset of JSON
    if isinstance(data, dict) and "answers" in data:
        data = data["answers"]
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(source, ["expected a list of answers (or a mapping with 'answers:')"])
    fixtures: list[Fixture] = []
    problems: list[str] = []
    for index, entry in enumerate(data):
        entry_problems: list[str] = []
        fixture = _fixture(entry, f"answers[{index}]", source, entry_problems)
        problems += entry_problems
        if fixture is not None:
            fixtures.append(fixture)
    if problems:
        raise ConfigError(source, problems)
    return fixtures


def load_fixtures(directory: Path) -> list[Fixture]:
    """Every fixture file in ``directory`` (sorted by name; first match wins)."""
    if not directory.is_dir():
        raise ConfigError(str(directory), ["LLM fixtures directory does not exist"])
    fixtures: list[Fixture] = []
    for path in sorted(directory.iterdir()):
        if path.suffix in FIXTURE_SUFFIXES and path.is_file():
            fixtures += parse_fixtures(path.read_text(encoding="utf-8"), str(path))
    return fixtures


@dataclass(frozen=True)
class MockAnswer:
    reply: str
    usage: Usage
    fixture: Fixture | None


@dataclass(frozen=True)
class MockResponder:
    fixtures: tuple[Fixture, ...] = ()

    def answer(self, request: ChatRequest) -> MockAnswer:
        fixture = next((f for f in self.fixtures if f.matches(request.body)), None)
        if fixture is not None:
            reply = fixture.reply
        else:
            # Same request, same reply: derived from the request hash.
            reply = f"Mock reply {request.key[:12]} (no fixture matched)."
        return MockAnswer(reply, estimate_usage(request.body, reply), fixture)


def _pieces(reply: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", reply) or [""]


def completion_body(request: ChatRequest, reply: str, usage: Usage) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-mock-{request.key[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": "cicd-mock",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage.to_json(),
    }


def completion_chunks(request: ChatRequest, reply: str, usage: Usage) -> list[dict[str, Any]]:
    """The SSE chunks OpenAI would send, with the usage-only final chunk."""
    head = {
        "id": f"chatcmpl-mock-{request.key[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
        "system_fingerprint": "cicd-mock",
    }

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice]}

    chunks = [chunk({"role": "assistant", "content": ""}, None)]
    chunks += [chunk({"content": piece}, None) for piece in _pieces(reply)]
    chunks.append(chunk({}, "stop"))
    chunks.append({**head, "choices": [], "usage": usage.to_json()})
    return chunks


# --- upstream ---------------------------------------------------------------


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
