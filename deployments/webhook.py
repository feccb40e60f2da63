"""A small receiver for GitHub-style webhooks that starts pipeline runs.

Prefect's incoming webhooks are a Prefect Cloud feature
(https://docs.prefect.io/v3/automate/events/webhook-triggers), so
``cicd webhook`` runs this receiver next to the Prefect server: a Starlette app
on uvicorn (both come with Prefect), listening with a backlog of
``BACKLOG`` connections, so a flood of deliveries waits in the kernel's queue
instead of being reset (the stdlib ``ThreadingHTTPServer`` listens with 5).
The git host (GitHub, Gitea, Forgejo) POSTs events here with a shared secret.

Per request:

1. ``Content-Length`` over ``max_body`` -> 413 before reading the body; none -> 411.
2. ``X-Hub-Signature-256: sha256=<hex>`` must be the HMAC-SHA256 of the raw body
   with the secret, compared in constant time; else 401 and nothing is started.
3. Body not JSON (or form-encoded ``payload=<json>``, GitHub's other content type),
   or nested deeper than ``webhook_events.MAX_JSON_DEPTH`` -> 400; a payload without a
   field the event needs, or with a clone URL, SHA or ref name that is not valid
   (``deployments.webhook_events``) -> 400 naming the field, and nothing is started.
4. :func:`route_event` maps the event to a pipeline; anything else -> 200 with a
   ``reason`` (200, so the git host does not show the delivery as failed).
5. The delivery id (``X-GitHub-Delivery``) is recorded durably
   (``deployments.webhook_store``) *before* the run is created: a replay of a
   known id, after a restart too, is answered 200 ``duplicate`` with the earlier
   run and starts nothing.
6. The injected ``start(deployment, parameters) -> flow_run_id`` is called in a
   bounded thread pool (runs are created concurrently; only identical triggers
   wait for each other); answer 202 with the flow run id; if it raises, 502 with
   the error, and the delivery is forgotten so that a redelivery can start it.

The mapping from events to pipelines is in ``deployments.webhook_events``.

A tag push makes GitHub send both ``push`` and ``create`` (two delivery ids), and
the git host redelivers on timeouts: an identical trigger seen within
``dedupe_seconds`` is answered with the earlier flow run instead of starting a
second one (a double release would try to publish the same version twice).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cicd.errors import BadInput
from deployments.webhook_events import Ignored, Trigger, decode_body, parse_event, route_event
from deployments.webhook_store import DeliveryStore, trigger_key

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
# An oversized body up to this size is read and dropped before the 413 (see _drain).
DRAIN_LIMIT_BYTES = 32 * 1024 * 1024
# Bodies up to this size are checked and parsed on the event loop itself.
INLINE_BODY_BYTES = 64 * 1024
# The listen queue: connections beyond it are refused by the kernel (capped by
# net.core.somaxconn, https://man7.org/linux/man-pages/man2/listen.2.html).
BACKLOG = 2048
# Flow runs created at once (each is one Prefect API call).
START_WORKERS = 16
# How long the server waits for open connections when it stops.
SHUTDOWN_GRACE_SECONDS = 5
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


class _Answer(Exception):
    """An early answer (status and body) from deep inside the handling."""

    def __init__(self, status: int, data: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.data = data


class WebhookServer:
    """The receiver, bound at construction (port 0 picks a free port: see ``url``)."""

    def __init__(
        self,
        address: tuple[str, int],
        secret: str | bytes,
        start: StartFn,
        tag_prefix: str = "v",
        branches: Collection[str] | None = None,
        max_body: int = MAX_BODY_BYTES,
        dedupe_seconds: float = DEDUPE_SECONDS,
        store: DeliveryStore | None = None,
        backlog: int = BACKLOG,
        start_workers: int = START_WORKERS,
    ) -> None:
        self.secret = _secret_bytes(secret)
        self.start = start
        self.tag_prefix = tag_prefix
        self.branches = branches
        self.max_body = max_body
        self.dedupe_seconds = dedupe_seconds
        self.store = store if store is not None else DeliveryStore(None)
        self.backlog = backlog
        # Identical work in flight, awaited by its duplicates (event-loop only).
        self._deliveries: dict[str, asyncio.Future[str]] = {}
        self._triggers: dict[str, asyncio.Future[str]] = {}
        self._starts = ThreadPoolExecutor(start_workers, thread_name_prefix="webhook-start")
        self.socket = socket.create_server(address, backlog=backlog)
        self.app = Starlette(
            routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST"])]
        )
        config = uvicorn.Config(
            self.app,
            backlog=backlog,
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host!s}:{port}/"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until :meth:`shutdown` (or SIGINT/SIGTERM in the main thread)."""
        del poll_interval  # the stdlib server's argument; uvicorn does not poll
        self._stopped.clear()
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()
        self._starts.shutdown(wait=True)
        self.store.close()

    # ----------------------------------------------------------------- requests

    async def _endpoint(self, request: Request) -> Response:
        if request.method == "GET":
            if request.url.path.rstrip("/") in ("", "/health"):
                return JSONResponse({"status": "ok"})
            return JSONResponse({"error": "not found"}, status_code=404)
        try:
            status, data = await self._handle(request)
        except _Answer as answer:
            status, data = answer.status, answer.data
        _log.info(
            "webhook %s %s delivery=%s -> %d %s",
            _header(request, EVENT_HEADERS) or "?",
            request.url.path,
            _header(request, DELIVERY_HEADERS) or "-",
            status,
            data.get("reason") or data.get("error") or data.get("flow_run_id") or "",
        )
        return JSONResponse(data, status_code=status)

    async def _body(self, request: Request) -> bytes:
        length_header = request.headers.get("content-length")
        if length_header is None:
            raise _Answer(411, {"error": "Content-Length required"})
        try:
            length = int(length_header)
        except ValueError:
            raise _Answer(400, {"error": f"bad Content-Length {length_header!r}"}) from None
        if length < 0 or length > self.max_body:
            await _drain(request, length)
            raise _Answer(413, {"error": f"body of {length} bytes exceeds {self.max_body}"})
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:  # more than announced: uvicorn stops at the length
                raise _Answer(413, {"error": f"body exceeds {self.max_body} bytes"})
            chunks.append(chunk)
        return b"".join(chunks)

    async def _handle(self, request: Request) -> tuple[int, dict[str, Any]]:
        body = await self._body(request)
        signature = request.headers.get(SIGNATURE_HEADER)
        event = _header(request, EVENT_HEADERS)
        content_type = request.headers.get("content-type", "application/json")
        if len(body) <= INLINE_BODY_BYTES:
            # Microseconds of work: a thread hop would cost more than it saves.
            routed = self._route(body, signature, event, content_type)
        else:
            # Hashing and parsing up to 5 MB is CPU work: off the event loop.
            routed = await run_in_threadpool(self._route, body, signature, event, content_type)
        if isinstance(routed, Ignored):
            return 200, {"status": "ignored", "event": event, "reason": routed.reason}
        try:
            run_id, new = await self.launch(routed, _header(request, DELIVERY_HEADERS))
        except _Answer:
            raise
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

    def _route(
        self, body: bytes, signature: str | None, event: str | None, content_type: str
    ) -> Trigger | Ignored:
        if not verify_signature(self.secret, body, signature):
            raise _Answer(401, {"error": f"missing or invalid {SIGNATURE_HEADER}"})
        if not event:
            raise _Answer(400, {"error": f"missing event header ({EVENT_HEADERS[0]})"})
        try:
            payload = decode_body(body, content_type)
            if not isinstance(payload, Mapping):
                raise BadInput(f"payload must be a JSON object, got {type(payload).__name__}")
            return route_event(event, payload, self.tag_prefix, self.branches)
        except BadInput as exc:
            raise _Answer(400, {"error": str(exc)}) from None

    async def launch(self, trigger: Trigger, delivery: str | None) -> tuple[str, bool]:
        """Start ``trigger`` once per delivery id and dedupe window; (flow run id, is_new).

        Runs on the event loop, so the checks and the in-flight maps need no lock;
        only the ``start`` call itself leaves the loop, for the thread pool.
        """
        key = trigger_key(trigger.deployment, dict(trigger.parameters))
        if delivery is not None:
            pending = self._deliveries.get(delivery)
            if pending is not None:  # the same delivery, twice at once
                return await asyncio.shield(pending), False
            claim = self.store.claim(delivery, key)
            if not claim.new:
                if claim.flow_run_id is None:
                    raise _Answer(200, {
                        "status": "duplicate",
                        "flow_run_id": None,
                        "reason": f"delivery {delivery} was received before and its start was "
                        "interrupted; it is not started again (start it by hand if needed)",
                    })  # fmt: skip
                return claim.flow_run_id, False
        loop = asyncio.get_running_loop()
        mine: asyncio.Future[str] = loop.create_future()
        if delivery is not None:
            self._deliveries[delivery] = mine
        try:
            run_id, new = await self._launch_trigger(trigger, key, delivery)
        except BaseException as exc:
            if delivery is not None:
                self.store.forget(delivery)
            mine.set_exception(exc)
            mine.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            mine.set_result(run_id)
            return run_id, new
        finally:
            if delivery is not None:
                del self._deliveries[delivery]

    async def _launch_trigger(
        self, trigger: Trigger, key: str, delivery: str | None
    ) -> tuple[str, bool]:
        pending = self._triggers.get(key)
        if pending is not None:  # push and create of one tag, at once
            run_id = await asyncio.shield(pending)
            self.store.finish(delivery, run_id, None)
            return run_id, False
        recent = self.store.recent_run(key, self.dedupe_seconds)
        if recent is not None:
            self.store.finish(delivery, recent, None)
            return recent, False
        loop = asyncio.get_running_loop()
        started = loop.run_in_executor(
            self._starts, self.start, trigger.deployment, dict(trigger.parameters)
        )
        self._triggers[key] = started
        try:
            run_id = await started
        finally:
            del self._triggers[key]
        self.store.finish(delivery, run_id, key)
        return run_id, True


def _header(request: Request, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = request.headers.get(name)
        if value:
            return value
    return None


async def _drain(request: Request, length: int) -> None:
    """Read and drop an unread body before answering, up to a bound.

    Closing a socket with unread input makes the kernel send a reset, which
    can destroy the 413 answer before the client reads it; a body far over
    the limit is not worth reading, so that client may see a reset instead.
    """
    if length > DRAIN_LIMIT_BYTES:
        return
    try:
        async with asyncio.timeout(5.0):
            async for _ in request.stream():
                pass
    except (TimeoutError, OSError):
        pass


def make_server(
    host: str,
    port: int,
    secret: str | bytes,
    start: StartFn,
    tag_prefix: str = "v",
    branches: Collection[str] | None = None,
    max_body: int = MAX_BODY_BYTES,
    dedupe_seconds: float = DEDUPE_SECONDS,
    store: DeliveryStore | None = None,
) -> WebhookServer:
    """A bound, not yet serving, receiver (port 0 picks a free port: see ``.url``).

    Without ``store`` the deliveries are remembered in memory only (tests);
    ``cicd webhook`` passes the durable one.
    """
    return WebhookServer(
        (host, port), secret, start, tag_prefix, branches, max_body, dedupe_seconds, store
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
