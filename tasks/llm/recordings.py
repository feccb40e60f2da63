"""Recorded LLM exchanges: one JSON file per request, committed in the target repo.

A recording is found again by the hash of the whole request: the endpoint
path, the model and the canonical JSON of the body (sorted keys, no
whitespace). Transport headers are not part of it (they differ between
client versions and carry the key); they are never stored at all.
Files are written with sorted keys and a fixed indent so that re-recording
an unchanged exchange gives a small, reviewable diff.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cicd.errors import ConfigError
from tasks.llm.redaction import redact

FORMAT_VERSION = 1


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(path: str, body: dict[str, Any]) -> str:
    """The identity of a request: sha256 over path, model and canonical body."""
    material = canonical_json({"path": path, "model": body.get("model"), "body": body})
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def message_text(message: Any) -> str:
    """The text of one chat message; content may be a string or a list of parts."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def last_user_message(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


@dataclass(frozen=True)
class Recording:
    """One exchange: the request body and either a JSON body or SSE chunks."""

    key: str
    path: str
    request: dict[str, Any]
    status: int
    body: dict[str, Any] | None = None
    chunks: tuple[Any, ...] | None = None

    @property
    def stream(self) -> bool:
        return self.chunks is not None

    def to_json(self) -> dict[str, Any]:
        response: dict[str, Any] = {"status": self.status}
        if self.chunks is not None:
            response["chunks"] = list(self.chunks)
        else:
            response["body"] = self.body
        return {
            "version": FORMAT_VERSION,
            "key": self.key,
            "request": {"method": "POST", "path": self.path, "body": self.request},
            "response": response,
        }


def _parse(data: Any, source: str) -> Recording:
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(source, ["expected a JSON object"])
    if data.get("version") != FORMAT_VERSION:
        problems.append(f"field 'version': expected {FORMAT_VERSION}, got {data.get('version')!r}")
    request = data.get("request")
    response = data.get("response")
    if not isinstance(request, dict) or not isinstance(request.get("body"), dict):
        problems.append("field 'request.body': expected an object")
    if not isinstance(response, dict) or not isinstance(response.get("status"), int):
        problems.append("field 'response.status': expected an integer")
    elif "chunks" in response and not isinstance(response["chunks"], list):
        problems.append("field 'response.chunks': expected a list")
    elif "chunks" not in response and not isinstance(response.get("body"), dict):
        problems.append("field 'response': expected 'body' (an object) or 'chunks' (a list)")
    if problems:
        raise ConfigError(source, problems)
    assert isinstance(request, dict) and isinstance(response, dict)
    chunks = response.get("chunks")
    return Recording(
        key=str(data.get("key", "")),
        path=str(request.get("path", "")),
        request=request["body"],
        status=response["status"],
        body=response.get("body") if chunks is None else None,
        chunks=tuple(chunks) if chunks is not None else None,
    )


class RecordingStore:
    """The recordings directory: ``<key>.json`` per request."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def load(self, key: str) -> Recording | None:
        path = self.path_for(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                str(path), [f"line {exc.lineno}: not valid JSON ({exc.msg})"]
            ) from None
        recording = _parse(data, str(path))
        if recording.key != key:
            # A renamed or hand-edited file would answer the wrong request.
            raise ConfigError(
                str(path), [f"field 'key': {recording.key!r} does not match the file name"]
            )
        return recording

    def save(self, recording: Recording, secrets: Iterable[str] = ()) -> Path:
        """Write atomically; ``secrets`` are masked in case a response echoes one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(recording.to_json(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        text = redact(text, secrets)
        path = self.path_for(recording.key)
        # Parallel test workers may record the same request: write a temp file
        # and rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(
            dir=self.directory, prefix=f".{recording.key[:12]}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def __iter__(self) -> Iterator[Recording]:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            try:
                yield _parse(json.loads(path.read_text(encoding="utf-8")), str(path))
            except (ConfigError, json.JSONDecodeError, OSError):
                continue

    def explain_miss(self, path: str, body: dict[str, Any]) -> str:
        """Why nothing matched: the nearest recordings and the body fields that differ."""
        if not self.directory.is_dir():
            return f"the recordings directory {self.directory} does not exist"
        count = 0
        nearest: list[str] = []
        question = last_user_message(body)
        for recording in self:
            count += 1
            if recording.path != path or recording.request.get("model") != body.get("model"):
                continue
            if last_user_message(recording.request) != question:
                continue
            fields = sorted(
                name
                for name in set(recording.request) | set(body)
                if recording.request.get(name) != body.get(name)
            )
            nearest.append(f"{recording.key[:12]} differs in {', '.join(fields)}")
        found = f"{count} recording(s) in {self.directory}"
        if nearest:
            return f"{found}; same model and last user message but: " + "; ".join(nearest[:3])
        return f"{found}; none with the same model and last user message"
