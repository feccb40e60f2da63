"""One TLS context per CA file for all of Prefect's API clients in a process.

Why: Prefect 3.9.1 builds a new ``ssl.SSLContext`` for every API client it makes,
loading certifi's whole CA bundle each time (``ssl.create_default_context(cafile=...)``
in ``PrefectClient.__init__`` and ``SyncPrefectClient.__init__``,
prefect/client/orchestration/__init__.py, and in the API version check,
prefect/_internal/version_checking.py). One ``cicd run`` makes seven: the flow's
client, the events and log workers', the version check and one per deferred
artifact. Each load took 20-250 ms of CPU holding the GIL on a 2-core machine,
most of them while the jobs run (bench/README.md, issue 15); the API of ``cicd up``
is plain HTTP on loopback, where no handshake ever uses the context at all.

A context is made to be shared: "SSLContext is designed to be shared and used for
multiple connections. It is thread safe as long as you don't reconfigure it once it
is used by a connection" (https://github.com/python/cpython/issues/118596, now in
https://docs.python.org/3/library/ssl.html#ssl-contexts), as requests was asked to
do for the same cost (https://github.com/psf/requests/pull/6667). Only the verified
contexts (a ``cafile``) are shared, so verification is exactly Prefect's: the
unverified one of ``PREFECT_API_TLS_INSECURE_SKIP_VERIFY``, which Prefect
reconfigures after making it, is still made per client.
"""

from __future__ import annotations

import ssl
import threading
from types import ModuleType
from typing import Any

# Where Prefect calls ssl.create_default_context for an API client.
PREFECT_MODULES = ("prefect.client.orchestration", "prefect._internal.version_checking")


class SharedContexts:
    """The ``ssl`` module as Prefect's client modules see it, except that a
    verified default context is made once per CA file and then reused."""

    def __init__(self) -> None:
        self._made: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    def create_default_context(
        self,
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: str | None = None,
        capath: str | None = None,
        cadata: str | bytes | None = None,
    ) -> ssl.SSLContext:
        if cafile is None or capath is not None or cadata is not None:
            return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)
        key = f"{purpose.name}:{cafile}"
        with self._lock:
            context = self._made.get(key)
            if context is None:
                context = ssl.create_default_context(purpose, cafile=cafile)
                self._made[key] = context
        return context


SHARED = SharedContexts()


def share() -> None:
    """Give Prefect's client modules the shared contexts (idempotent). A context
    made here before a fork (the warm runner's preload) serves every child."""
    import importlib

    for name in PREFECT_MODULES:
        module: ModuleType = importlib.import_module(name)
        if module.__dict__.get("ssl") is ssl:
            module.ssl = SHARED  # type: ignore[attr-defined]


def made_before_fork() -> None:
    """Load the CA bundle once now: the verified context Prefect's clients ask
    for (``PREFECT_API_SSL_CERT_FILE``, else certifi's bundle, as they choose it)."""
    import certifi
    from prefect.settings import PREFECT_API_SSL_CERT_FILE

    SHARED.create_default_context(cafile=PREFECT_API_SSL_CERT_FILE.value() or certifi.where())
