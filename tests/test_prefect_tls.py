"""One TLS context for all of Prefect's API clients in a process
(cicd/cli/prefect_tls.py, issue 15): shared, and still verifying."""

from __future__ import annotations

import ssl

import pytest

from cicd.cli import prefect_tls


def _context(client: object) -> ssl.SSLContext:
    # httpx.Client -> HTTPTransport -> httpcore.ConnectionPool, which keeps the
    # context it was given for every connection it opens.
    pool = client._client._transport._pool  # type: ignore[attr-defined]
    context = pool._ssl_context
    assert isinstance(context, ssl.SSLContext)
    return context


def test_prefect_clients_share_one_verifying_context_after_share() -> None:
    from prefect.client.orchestration import get_client

    prefect_tls.share()
    prefect_tls.share()  # idempotent: the module keeps the one proxy
    first = get_client(sync_client=True)
    second = get_client(sync_client=True)
    third = get_client()
    shared = _context(first)
    assert _context(second) is shared and _context(third) is shared
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname
    # The bundle is really in it: certifi's roots, not an empty store.
    assert shared.cert_store_stats()["x509_ca"] > 50


def test_without_share_each_client_builds_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.client.orchestration as orchestration
    from prefect.client.orchestration import get_client

    monkeypatch.setattr(orchestration, "ssl", ssl)
    assert _context(get_client(sync_client=True)) is not _context(get_client(sync_client=True))


def test_the_unverified_context_is_still_made_per_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, temporary_settings

    prefect_tls.share()
    with temporary_settings(updates={PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        first, second = get_client(sync_client=True), get_client(sync_client=True)
    assert _context(first) is not _context(second)
    assert _context(first).verify_mode == ssl.CERT_NONE
    # ... and it did not touch the shared, verifying one.
    verified = _context(get_client(sync_client=True))
    assert verified.verify_mode == ssl.CERT_REQUIRED
