"""A deterministic stand-in for an OpenAI-compatible API, on 127.0.0.1.

Used by the gateway's tests and benchmark, and handy to smoke-test a
pipeline in live or record mode without network or spend. It answers like
OpenAI: usage on every JSON answer, and on a stream only when the request
sets ``stream_options.include_usage`` (or always, Groq-style, under
``x_groq``). Its token counts are deliberately not the gateway's mock
estimate, so a test can tell which of them produced a number:

* ``prompt_tokens``: number of whitespace-separated words over all messages, plus 7
* ``completion_tokens``: number of words of the reply, plus 3
* reply: ``"Echo: <last user message>"``; a message containing ``FAIL-<code>``
  gets that HTTP error instead, one containing ``ECHO-AUTH`` gets the
  Authorization header it came with appended (an upstream leaking the key).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from tasks.llm.http_server import ServerThread
from tasks.llm.recordings import last_user_message, message_text

PROMPT_EXTRA = 7
COMPLETION_EXTRA = 3
SNAPSHOT_SUFFIX = "-2024-07-18"
_FAIL = re.compile(r"FAIL-(\d{3})")


def fake_reply(body: dict[str, Any], authorization: str = "") -> str:
    question = last_user_message(body)
    leak = f" [{authorization}]" if "ECHO-AUTH" in question else ""
    return f"Echo: {question}{leak}"


def fake_usage(body: dict[str, Any], reply: str) -> tuple[int, int]:
    messages = body.get("messages") or []
    words = sum(len(message_text(m).split()) for m in messages)
    return words + PROMPT_EXTRA, len(reply.split()) + COMPLETION_EXTRA


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class FakeUpstream:
    """Start with :meth:`start`; ``url`` is the ``/v1`` base the gateway forwards to."""

    usage_style: Literal["openai", "groq"] = "openai"
    delay_seconds: float = 0.0
    requests: list[SeenRequest] = field(default_factory=list)
    _server: ServerThread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        self._server = ServerThread(_handler_for(self), name="fake-upstream")
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FakeUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the fake upstream is not running"
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def seen(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def completion(self, body: dict[str, Any], authorization: str = "") -> dict[str, Any]:
        reply = fake_reply(body, authorization)
        prompt, completion = fake_usage(body, reply)
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model")) + SNAPSHOT_SUFFIX,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    def chunks(self, body: dict[str, Any], authorization: str = "") -> list[dict[str, Any]]:
        reply = fake_reply(body, authorization)
        prompt, completion = fake_usage(body, reply)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        head = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": str(body.get("model")) + SNAPSHOT_SUFFIX,
        }
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        extra = {"usage": None} if include_usage and self.usage_style == "openai" else {}
        pieces = re.findall(r"\S+\s*", reply)
        chunks = [
            {**head, **extra, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
            *(
                {**head, **extra, "choices": [{"index": 0, "delta": {"content": p}}]}
                for p in pieces
            ),
        ]
        final: dict[str, Any] = {
            **head,
            **extra,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        if self.usage_style == "groq":
            final["x_groq"] = {"id": "req_fake", "usage": usage}
        chunks.append(final)
        if include_usage and self.usage_style == "openai":
            chunks.append({**head, "choices": [], "usage": usage})
        return chunks


def _handler_for(fake: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            fake.seen(SeenRequest("GET", self.path, dict(self.headers), None))
            if self.path == "/v1/models":
                self._json(
                    200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
                )
            else:
                self._json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            fake.seen(SeenRequest("POST", self.path, dict(self.headers), body))
            if fake.delay_seconds:
                time.sleep(fake.delay_seconds)
            if self.path != "/v1/chat/completions":
                self._json(404, {"error": {"message": "not found"}})
                return
            auth = self.headers.get("Authorization", "")
            failure = _FAIL.search(last_user_message(body))
            if failure:
                code = int(failure.group(1))
                self._json(code, {"error": {"message": f"injected failure {code}", "type": "test"}})
                return
            if not body.get("stream"):
                self._json(200, fake.completion(body, auth))
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in fake.chunks(body, auth):
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler
