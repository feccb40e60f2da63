"""Keep secret values (the upstream LLM key) out of logs.

Prefect does not redact Secret block values: a key that reaches a log call
goes to the console and to the server's stored logs in clear text. The work
is done by the core registry in :mod:`cicd.masking` (one list of every secret
in use, masked in logs, artifacts, ``--json``, JUnit and reports); this module
keeps the names the LLM layer and its callers have always used.
"""

from __future__ import annotations

from collections.abc import Iterable

from cicd import masking
from cicd.masking import MASK, MIN_SECRET_LENGTH, PREFECT_LOGGERS, MaskingFilter, SecretRegistry

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "PREFECT_LOGGERS",
    "SecretRedactor",
    "install_redactor",
    "installed_redactor",
    "redact",
]


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    # Longest first, so a secret containing another is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


class SecretRedactor(MaskingFilter):
    """A logging filter that masks its own list of secret strings."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(SecretRegistry(secrets))


def install_redactor(
    secrets: Iterable[str], logger_names: Iterable[str] = PREFECT_LOGGERS
) -> MaskingFilter:
    """Register ``secrets`` process-wide and mask them in every handler of ``logger_names``.

    Idempotent: one process-wide filter (:data:`cicd.masking.FILTER`) collects
    every secret ever registered, and is added once per handler.
    """
    masking.register(secrets)
    return masking.install_filter(logger_names)


def installed_redactor() -> MaskingFilter:
    """The process-wide filter :func:`install_redactor` attaches."""
    return masking.FILTER
