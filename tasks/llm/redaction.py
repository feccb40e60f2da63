"""Keep secret values (the upstream LLM key) out of logs.

Prefect does not redact Secret block values: a key that reaches a log call
goes to the console and to the server's stored logs in clear text (shared
notes, "Secret blocks and log redaction"). A filter on the handlers rewrites
each record before any handler formats it; text the project writes itself
(subprocess output) goes through :func:`redact`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

MASK = "***"
# Loggers whose handlers Prefect sets up: the root console handler and the
# API handler that ships flow and task run logs to the server.
PREFECT_LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
# Values this short would mask ordinary words all over the logs; no real
# API key is this short.
MIN_SECRET_LENGTH = 6


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    # Longest first, so a secret containing another is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


class SecretRedactor(logging.Filter):
    """A logging filter that masks secret strings in the rendered message."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def add(self, secrets: Iterable[str]) -> None:
        new = [s for s in secrets if s]
        too_short = [s for s in new if len(s) < MIN_SECRET_LENGTH]
        if too_short:
            raise ValueError(
                f"refusing to redact a secret shorter than {MIN_SECRET_LENGTH} characters"
            )
        with self._lock:
            self._secrets = tuple(dict.fromkeys((*self._secrets, *new)))

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if not secrets:
            return True
        # Render with the args first: the secret may be an argument, and a
        # handler later in the chain would otherwise format it in clear.
        message = record.getMessage()
        record.msg, record.args = redact(message, secrets), ()
        if record.exc_info and not record.exc_text:
            # The formatter reuses exc_text when set, so the traceback
            # (exception messages included) is rendered once, here, masked.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        return True


_installed = SecretRedactor()
_install_lock = threading.Lock()


def install_redactor(
    secrets: Iterable[str], logger_names: Iterable[str] = PREFECT_LOGGERS
) -> SecretRedactor:
    """Mask ``secrets`` in every handler of Prefect's loggers (and ``logger_names``).

    Idempotent: one process-wide filter collects every secret ever installed,
    and is added once per handler. Call it again after Prefect sets up its
    handlers (i.e. inside the flow) so the API handler is covered too.
    """
    with _install_lock:
        _installed.add(secrets)
        for name in logger_names:
            for handler in logging.getLogger(name).handlers:
                if _installed not in handler.filters:
                    handler.addFilter(_installed)
    return _installed


def installed_redactor() -> SecretRedactor:
    """The process-wide filter :func:`install_redactor` attaches."""
    return _installed
