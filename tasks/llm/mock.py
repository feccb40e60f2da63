"""The ``mock`` mode: a fixture reply (matched on the last user message) or a
reply derived from the request hash, in the shapes OpenAI would send.

Token counts are estimated at ~4 characters per token so "what it would
have cost" can still be priced.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cicd.config import load_yaml
from cicd.errors import ConfigError
from tasks.llm.openai_api import ChatRequest, Usage
from tasks.llm.recordings import last_user_message, message_text

FIXTURE_SUFFIXES = (".yaml", ".yml", ".json")
CHARS_PER_TOKEN = 4
# OpenAI documents a few tokens of framing per chat message (role, separators).
MESSAGE_OVERHEAD_TOKENS = 4


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
