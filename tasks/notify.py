"""Notifications on pipeline failure or on LLM cost over the alert threshold.

Two channels, both optional (``cicd.yaml`` ``notify:``):

* ``webhook_url``: a Slack-compatible incoming webhook; we POST ``{"text": ...}``
  with httpx ourselves, so a non-2xx answer or a connection error is an error
  we see (seed 003 used ``action-slack`` with ``SLACK_WEBHOOK``).
* ``block``: a saved Prefect notification block (SlackWebhook,
  CustomWebhookNotificationBlock, ...), by ``<block-type-slug>/<name>`` or by bare
  name. Apprise-based blocks swallow delivery failures and return ``None``
  (https://github.com/PrefectHQ/prefect/issues/19564 shows one), so ``notify``
  is called inside the block's ``raise_on_failure()`` context
  (https://github.com/prefect-archive/prefect-slack/pull/70).

A failed notification must never fail the pipeline it reports on (the report
would replace the real failure), but it must not vanish either: :func:`notify`
logs every failed delivery at ERROR and returns what was and was not delivered.

Webhook URLs carry their secret in the path (Slack: ``/services/T../B../token``)
or the query string, so every message shows the URL through :func:`mask_url`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from cicd.config import NotifyConfig
from cicd.errors import CicdError

DEFAULT_TIMEOUT = 10.0
# A path segment that reads like a word ("services", "api", "webhooks") is shown;
# from the first one that does not (ids, tokens), the rest of the path is masked.
_PLAIN_SEGMENT = re.compile(r"^[A-Za-z][A-Za-z_-]{0,19}$")

_log = logging.getLogger(__name__)


class NotificationError(CicdError):
    """A notification was not delivered. The message never contains the URL's secret."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the fields when Prefect pickles the exception into a result.
        return (type(self), (str(self), self.url, self.status))


@dataclass(frozen=True)
class NotifyResult:
    """Which deliveries of one notification succeeded (``webhook``, ``block:<name>``)."""

    delivered: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


def mask_url(url: str) -> str:
    """The URL with its secret parts replaced by ``***``: password, query,
    and the path from the first segment that is not a plain word."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    netloc = f"{host}:{port}" if port is not None else host
    if parts.username:
        netloc = f"{parts.username}{':***' if parts.password else ''}@{netloc}"
    shown: list[str] = []
    segments = [s for s in parts.path.split("/") if s]
    for segment in segments:
        if not _PLAIN_SEGMENT.match(segment):
            shown.append("***")
            break
        shown.append(segment)
    path = "/" + "/".join(shown) if shown else ""
    query = "?***" if parts.query else ""
    return f"{parts.scheme}://{netloc}{path}{query}"


def slack_payload(subject: str, body: str) -> dict[str, str]:
    """Slack's incoming-webhook format; most chat tools accept ``text`` as well."""
    text = f"*{subject}*\n{body}" if body else f"*{subject}*"
    return {"text": text}


def send_webhook(url: str, payload: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT) -> int:
    """POST ``payload`` as JSON; returns the status. Raises NotificationError on a
    non-2xx answer (including redirects, which are not followed) or a transport error."""
    shown = mask_url(url)
    try:
        response = httpx.post(url, json=dict(payload), timeout=timeout)
    except httpx.HTTPError as exc:
        # httpx messages may quote the URL; never let the raw one through.
        detail = str(exc).replace(url, shown) or type(exc).__name__
        raise NotificationError(
            f"notification to {shown} failed: {type(exc).__name__}: {detail}", url=shown
        ) from None
    except ValueError as exc:  # an unparseable URL
        raise NotificationError(f"notification URL {shown} is invalid: {exc}", url=shown) from None
    if not 200 <= response.status_code < 300:
        snippet = response.text[:200].strip()
        raise NotificationError(
            f"notification to {shown} failed: HTTP {response.status_code}"
            + (f": {snippet}" if snippet else ""),
            url=shown,
            status=response.status_code,
        )
    return response.status_code


def _load_block(name: str) -> Any:
    """Load a notification block by ``slug/name`` or by a bare, unambiguous name."""
    from prefect.blocks.abstract import NotificationBlock
    from prefect.blocks.core import Block
    from prefect.client.orchestration import get_client

    slug_name = name
    if "/" not in name:
        with get_client(sync_client=True) as client:
            documents = client.read_block_documents(include_secrets=False)
        slugs = sorted(
            doc.block_type.slug
            for doc in documents
            if doc.name == name and doc.block_type is not None
        )
        if not slugs:
            raise NotificationError(f"notify.block: no Prefect block named {name!r}")
        if len(slugs) > 1:
            raise NotificationError(
                f"notify.block: {name!r} is ambiguous, write one of "
                + ", ".join(f"{slug}/{name}" for slug in slugs)
            )
        slug_name = f"{slugs[0]}/{name}"
    try:
        block = Block.load(slug_name)
    except (ValueError, KeyError) as exc:
        raise NotificationError(f"notify.block: cannot load {slug_name!r}: {exc}") from None
    if not isinstance(block, NotificationBlock):
        raise NotificationError(
            f"notify.block: {slug_name!r} is a {type(block).__name__}, not a notification block"
        )
    return block


def send_block(name: str, subject: str, body: str) -> None:
    """Notify through a saved Prefect notification block; raises NotificationError."""
    block = _load_block(name)
    try:
        with block.raise_on_failure():
            block.notify(body=body, subject=subject)
    except Exception as exc:
        if isinstance(exc, httpx.HTTPStatusError):
            # CustomWebhookNotificationBlock raises this with the block's URL in it.
            detail = f"HTTP {exc.response.status_code} from {mask_url(str(exc.request.url))}"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        raise NotificationError(f"notification block {name!r} failed: {detail}") from None


def notify(
    config: NotifyConfig,
    subject: str,
    body: str,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> NotifyResult:
    """Send to every configured channel; failures are logged at ERROR, not raised.

    ``logger`` is typically Prefect's ``get_run_logger()`` so the error shows in
    the flow run's logs.
    """
    log = logger or _log
    delivered: list[str] = []
    failed: list[str] = []
    if config.webhook_url:
        try:
            send_webhook(config.webhook_url, slack_payload(subject, body), timeout)
            delivered.append("webhook")
        except NotificationError as exc:
            log.error("notification not delivered: %s", exc)
            failed.append("webhook")
    if config.block:
        target = f"block:{config.block}"
        try:
            send_block(config.block, subject, body)
            delivered.append(target)
        except NotificationError as exc:
            log.error("notification not delivered: %s", exc)
            failed.append(target)
        except Exception as exc:  # e.g. the Prefect API is unreachable
            log.error(
                "notification not delivered: block %r: %s: %s",
                config.block, type(exc).__name__, exc,
            )
            failed.append(target)
    if not config.webhook_url and not config.block:
        log.debug("no notification channel configured; %r not sent", subject)
    return NotifyResult(delivered=tuple(delivered), failed=tuple(failed))
