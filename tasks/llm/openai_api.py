"""The OpenAI chat-completions shapes the gateway speaks, free of HTTP:
the request, token usage, error bodies and streamed chunks
(https://platform.openai.com/docs/api-reference/chat), and the
:class:`ResponseSink` an answer is written to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

CHAT_PATH = "/chat/completions"
MODELS_PATH = "/models"


class ResponseSink(Protocol):
    """Where an answer goes: JSON in one piece, or an SSE stream of ``data:`` events."""

    # True once start_stream has sent the headers: an error must then go in-band.
    streaming: bool

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
