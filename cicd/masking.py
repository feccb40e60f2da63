"""One registry of the secret values in use, and the masking of every output.

Prefect does not redact Secret block values, and our own outputs (artifacts,
``--json``, JUnit text, reports, logs) are text we write ourselves: a value a
test printed or stole ends up in each of them in clear (issue 13, item 6).
Every secret the process loads (Secret blocks, service passwords, index
tokens) is registered here once; :func:`mask` and :func:`mask_json` rewrite
text and JSON-like data, and :class:`MaskingFilter` rewrites log records
before any handler formats them.

A value is also masked in the forms our outputs encode it in: JSON string
escaping, XML/HTML escaping (JUnit, the HTML coverage report) and URL
quoting (a password inside a connection URL).
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MASK = "***"
# Values this short would mask ordinary words all over the outputs; no real
# key, token or password we hand out is this short.
MIN_SECRET_LENGTH = 6


def encoded_forms(secret: str) -> set[str]:
    """``secret`` as written raw, in JSON strings, in XML text and in URLs."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        html.escape(secret, quote=True),
        html.escape(secret, quote=False),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
    }


class SecretRegistry:
    """Secret values, masked longest first so a secret containing another goes whole."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def add(self, secrets: Iterable[str]) -> None:
        """Register ``secrets``; empty values are ignored, too-short ones refused."""
        new = [s for s in secrets if s]
        too_short = [s for s in new if len(s) < MIN_SECRET_LENGTH]
        if too_short:
            raise ValueError(
                f"refusing to mask a secret shorter than {MIN_SECRET_LENGTH} characters"
            )
        if not new:
            return
        with self._lock:
            self._secrets = tuple(dict.fromkeys((*self._secrets, *new)))
            forms = {form for secret in self._secrets for form in encoded_forms(secret)}
            ordered = sorted(forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(form) for form in ordered))

    def mask(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def mask_json(self, value: Any) -> Any:
        """``value`` (nested dicts, lists, tuples, strings) with every string masked."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {self.mask_json(k): self.mask_json(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.mask_json(item) for item in value)
        return value


class MaskingFilter(logging.Filter):
    """A logging filter that masks a registry's secrets in the rendered record."""

    def __init__(self, registry: SecretRegistry) -> None:
        super().__init__()
        self.registry = registry

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.registry.secrets

    def add(self, secrets: Iterable[str]) -> None:
        self.registry.add(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        registry = self.registry
        if not registry.secrets:
            return True
        # Render with the args first: the secret may be an argument, and a
        # handler later in the chain would otherwise format it in clear.
        record.msg, record.args = registry.mask(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            # The formatter reuses exc_text when set, so the traceback
            # (exception messages included) is rendered once, here, masked.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = registry.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = registry.mask(record.stack_info)
        return True


# The process-wide registry: every secret this process has loaded.
REGISTRY = SecretRegistry()
FILTER = MaskingFilter(REGISTRY)
# Loggers whose handlers Prefect sets up: the root console handler and the
# API handler that ships flow and task run logs to the server.
PREFECT_LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
_install_lock = threading.Lock()


def register(secrets: Iterable[str]) -> None:
    """Mask ``secrets`` from now on in :func:`mask`, :func:`mask_json` and installed logs."""
    REGISTRY.add(secrets)


def registered() -> tuple[str, ...]:
    return REGISTRY.secrets


def mask(text: str) -> str:
    """``text`` with every registered secret (in any encoded form) replaced by ``***``."""
    return REGISTRY.mask(text)


def mask_json(value: Any) -> Any:
    """A copy of ``value`` with every registered secret masked in keys and strings."""
    return REGISTRY.mask_json(value)


# mask_file reads this many characters at a time; a piece with no newline in
# _MASK_FILE_SPAN characters is masked as it is.
_MASK_FILE_CHUNK = 2**20
_MASK_FILE_SPAN = 4 * _MASK_FILE_CHUNK


def mask_file(path: Path) -> None:
    """Rewrite ``path`` (a report a tool wrote, e.g. JUnit XML) with secrets masked.

    Streamed, a piece ending at a newline at a time (a secret holds no newline),
    so that a report of a test that printed 200 MB (``junit_logging``) is not
    read into memory whole; the file is replaced only when something was masked.
    """
    if not REGISTRY.secrets or not path.is_file():
        return
    changed = False
    masked_path = path.with_name(f".{path.name}.masked")
    try:
        with (
            path.open(encoding="utf-8", errors="replace", newline="") as source,
            masked_path.open("w", encoding="utf-8", newline="") as target,
        ):
            # Without a newline, the cut leaves the last ``longest - 1`` characters for
            # the next piece: a secret that starts in them is masked there, whole.
            longest = max(
                len(form) for secret in REGISTRY.secrets for form in encoded_forms(secret)
            )
            pending = ""
            while chunk := source.read(_MASK_FILE_CHUNK):
                pending += chunk
                cut = pending.rfind("\n") + 1
                if not cut:
                    if len(pending) < _MASK_FILE_SPAN:
                        continue
                    cut = len(pending) - longest + 1
                piece, pending = pending[:cut], pending[cut:]
                masked = mask(piece)
                changed = changed or masked != piece
                target.write(masked)
            masked = mask(pending)
            changed = changed or masked != pending
            target.write(masked)
        if changed:
            os.replace(masked_path, path)
    finally:
        masked_path.unlink(missing_ok=True)


def install_filter(logger_names: Iterable[str] = PREFECT_LOGGERS) -> MaskingFilter:
    """Add the process-wide filter to every handler of ``logger_names`` (once each).

    Call it again after Prefect sets up its handlers (inside the flow) so the
    API handler that ships logs to the server is covered too.
    """
    with _install_lock:
        for name in logger_names:
            for handler in logging.getLogger(name).handlers:
                if FILTER not in handler.filters:
                    handler.addFilter(FILTER)
    return FILTER


# Settings whose values are credentials of the Prefect API itself: the basic-auth
# string (``user:password``) of a protected server and a Cloud key.
CREDENTIAL_SETTINGS = (
    "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_API_KEY",
)


def register_credentials(environ: Mapping[str, str]) -> None:
    """Mask the API credentials found in ``environ`` (a worker hands them to its
    flow runs in their environment), the auth string's password on its own too."""
    for name in CREDENTIAL_SETTINGS:
        value = environ.get(name)
        if value:
            # A password shorter than MIN_SECRET_LENGTH cannot be masked alone
            # without masking ordinary words; the whole string still is.
            parts = (value, value.partition(":")[2])
            register([part for part in parts if len(part) >= MIN_SECRET_LENGTH])
