"""A small receiver for GitHub-style webhooks that starts pipeline runs.

Prefect's incoming webhooks are a Prefect Cloud feature
(https://docs.prefect.io/v3/automate/events/webhook-triggers), so
``cicd webhook`` runs this stdlib server next to the Prefect server. The git host
(GitHub, Gitea, Forgejo) is configured to POST events here with a shared secret.

Per request:

1. ``Content-Length`` over ``max_body`` -> 413 before reading the body; none -> 411.
2. ``X-Hub-Signature-256: sha256=<hex>`` must be the HMAC-SHA256 of the raw body
   with the secret, compared in constant time; else 401 and nothing is started.
3. Body not JSON (or form-encoded ``payload=<json>``, GitHub's other content type)
   -> 400; a payload without a field the event needs, or with a clone URL, SHA or
   ref name that is not valid (``deployments.webhook_events``) -> 400 naming the
   field, and nothing is started.
4. :func:`route_event` maps the event to a pipeline; anything else -> 200 with a
   ``reason`` (200, so the git host does not show the delivery as failed).
5. The injected ``start(deployment, parameters) -> flow_run_id`` is called;
   answer 202 with the flow run id; if it raises, 502 with the error.

The mapping from events to pipelines is in ``deployments.webhook_events``.

A tag push makes GitHub send both ``push`` and ``create``, and the git host
redelivers on timeouts: an identical trigger seen within ``dedupe_seconds`` is
answered with the earlier flow run instead of starting a second one (a double
release would try to publish the same version twice).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cicd.errors import BadInput
from deployments.webhook_events import Ignored, Trigger, decode_body, parse_event, route_event

__all__ = [
    "Ignored",
    "StartFn",
    "Trigger",
    "WebhookServer",
    "decode_body",
    "make_server",
    "parse_event",
    "route_event",
    "sign",
    "start_with_prefect",
    "verify_signature",
]

MAX_BODY_BYTES = 5 * 1024 * 1024
DEDUPE_SECONDS = 600.0
# An oversized body up to this size is read and dropped after the 413 (see _drain).
DRAIN_LIMIT_BYTES = 32 * 1024 * 1024
# How long one client may take to send its body before its thread gives up.
REQUEST_TIMEOUT_SECONDS = 30.0
SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADERS = ("X-GitHub-Event", "X-Gitea-Event", "X-Forgejo-Event", "X-Gogs-Event")
DELIVERY_HEADERS = ("X-GitHub-Delivery", "X-Gitea-Delivery", "X-Forgejo-Delivery")

StartFn = Callable[[str, dict[str, Any]], str]

_log = logging.getLogger(__name__)


def _secret_bytes(secret: str | bytes) -> bytes:
    value = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not value:
        # An empty key would let anyone compute a valid signature.
        raise BadInput("webhook secret is empty")
    return value


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value for ``body``."""
    return "sha256=" + hmac.new(_secret_bytes(secret), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """True when ``header`` is ``sha256=<hex HMAC-SHA256 of body>`` (constant-time)."""
    expected = sign(secret, body).encode("ascii")
    if not header:
        return False
    given = header.strip()
    # The hex digest is case-insensitive; only the "sha256=" prefix is lowered.
    if given[:7].lower() != "sha256=":
        return False
    return hmac.compare_digest(expected, ("sha256=" + given[7:].lower()).encode("utf-8", "replace"))


@dataclass
class _Dedupe:
    window: float
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, str]] = field(
        default_factory=dict
    )
    lock: threading.Lock = field(default_factory=threading.Lock)


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        secret: str | bytes,
        start: StartFn,
        tag_prefix: str = "v",
        branches: Collection[str] | None = None,
        max_body: int = MAX_BODY_BYTES,
        dedupe_seconds: float = DEDUPE_SECONDS,
    ) -> None:
        self.secret = _secret_bytes(secret)
        self.start = start
        self.tag_prefix = tag_prefix
        self.branches = branches
        self.max_body = max_body
        self.dedupe = _Dedupe(dedupe_seconds)
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"

    def launch(self, trigger: Trigger) -> tuple[str, bool]:
        """Start the trigger once per dedupe window; returns (flow run id, is_new)."""
        key = trigger.key()
        with self.dedupe.lock:
            # Held while starting, so a push and a create of the same tag that
            # arrive together cannot both start a release.
            now = time.monotonic()
            seen = self.dedupe.seen
            for old in [k for k, (at, _) in seen.items() if now - at > self.dedupe.window]:
                del seen[old]
            if key in self.dedupe.seen:
                return self.dedupe.seen[key][1], False
            run_id = self.start(trigger.deployment, dict(trigger.parameters))
            self.dedupe.seen[key] = (now, run_id)
            return run_id, True


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    timeout = REQUEST_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.1"
    _discard = 0

    def _reply(self, status: int, data: Mapping[str, Any]) -> None:
        body = (json.dumps(data) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _header(self, names: tuple[str, ...]) -> str | None:
        for name in names:
            value = self.headers.get(name)
            if value:
                return value
        return None

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("", "/health"):
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        delivery = self._header(DELIVERY_HEADERS) or "-"
        status, data = self._handle()
        _log.info(
            "webhook %s %s delivery=%s -> %d %s",
            self._header(EVENT_HEADERS) or "?",
            self.path,
            delivery,
            status,
            data.get("reason") or data.get("error") or data.get("flow_run_id") or "",
        )
        self._reply(status, data)
        if self._discard:
            self._drain(self._discard)

    def _drain(self, length: int) -> None:
        """Read and drop an unread body before closing, up to a bound.

        Closing a socket with unread input makes the kernel send a reset, which
        can destroy the 413 answer before the client reads it; a body far over
        the limit is not worth reading, so that client may see a reset instead.
        """
        if length > DRAIN_LIMIT_BYTES:
            return
        self.connection.settimeout(2.0)
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 65536))
                if not chunk:
                    break
                length -= len(chunk)
        except OSError:
            pass

    def _handle(self) -> tuple[int, dict[str, Any]]:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self.close_connection = True
            return 411, {"error": "Content-Length required"}
        try:
            length = int(length_header)
        except ValueError:
            self.close_connection = True
            return 400, {"error": f"bad Content-Length {length_header!r}"}
        if length < 0 or length > self.server.max_body:
            self.close_connection = True
            self._discard = length
            return 413, {"error": f"body of {length} bytes exceeds {self.server.max_body}"}
        body = self.rfile.read(length)
        if not verify_signature(self.server.secret, body, self.headers.get(SIGNATURE_HEADER)):
            return 401, {"error": f"missing or invalid {SIGNATURE_HEADER}"}
        event = self._header(EVENT_HEADERS)
        if not event:
            return 400, {"error": f"missing event header ({EVENT_HEADERS[0]})"}
        try:
            payload = decode_body(body, self.headers.get("Content-Type", "application/json"))
            if not isinstance(payload, Mapping):
                raise BadInput(f"payload must be a JSON object, got {type(payload).__name__}")
            routed = route_event(event, payload, self.server.tag_prefix, self.server.branches)
        except BadInput as exc:
            return 400, {"error": str(exc)}
        if isinstance(routed, Ignored):
            return 200, {"status": "ignored", "event": event, "reason": routed.reason}
        try:
            run_id, new = self.server.launch(routed)
        except Exception as exc:
            _log.error("could not start %s for %s: %s", routed.deployment, routed.description, exc)
            return 502, {"error": f"could not start {routed.deployment}: {exc}"}
        return (202 if new else 200), {
            "status": "started" if new else "duplicate",
            "deployment": routed.deployment,
            "parameters": routed.parameters,
            "flow_run_id": run_id,
            "description": routed.description,
        }

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib writes every request to stderr; our own line is logged in do_POST.
        _log.debug(format, *args)


def make_server(
    host: str,
    port: int,
    secret: str | bytes,
    start: StartFn,
    tag_prefix: str = "v",
    branches: Collection[str] | None = None,
    max_body: int = MAX_BODY_BYTES,
    dedupe_seconds: float = DEDUPE_SECONDS,
) -> WebhookServer:
    """A bound, not yet serving, receiver (port 0 picks a free port: see ``.url``)."""
    return WebhookServer(
        (host, port), secret, start, tag_prefix, branches, max_body, dedupe_seconds
    )


def start_with_prefect(name_template: str = "{flow}/{flow}") -> StartFn:
    """A ``start`` that creates a flow run of the deployment ``name_template.format(flow=...)``
    (e.g. ``pr-validation/pr-validation``) and returns its id without waiting for it."""
    if "/" not in name_template:
        raise BadInput(f"deployment name template {name_template!r} must be '<flow>/<deployment>'")

    def start(deployment: str, parameters: dict[str, Any]) -> str:
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        name = name_template.format(flow=deployment)
        try:
            flow_run = run_deployment(
                name=name,
                parameters=parameters,
                timeout=0,
                tags=["webhook"],
                as_subflow=False,
            )
        except ObjectNotFound:
            raise BadInput(
                f"deployment {name!r} not found on the Prefect server (run `prefect deploy`)"
            ) from None
        # Called from a handler thread, never an event loop: the sync variant ran.
        assert isinstance(flow_run, FlowRun)
        return str(flow_run.id)

    return start
