"""Notifications: real HTTP receivers on 127.0.0.1, and real Prefect blocks saved
on the session's Prefect server (tests/conftest.py ``prefect_server``)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from cicd.config import NotifyConfig
from tasks.notify import NotificationError, mask_url, notify, send_webhook, slack_payload

SECRET = "SeCrEtToKeN0123456789"


class Receiver:
    """A stdlib HTTP server that records every POST and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.append((self.path, dict(self.headers), body))
                reply = b"ok" if receiver.status < 300 else b"receiver says no"
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def json_bodies(self) -> list[dict[str, object]]:
        return [json.loads(body) for _, _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def failing_receiver() -> Iterator[Receiver]:
    server = Receiver(status=500)
    yield server
    server.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/services/T0001/B0002/{SECRET}"


# --------------------------------------------------------------------- plain webhook


def test_send_webhook_posts_slack_json(receiver: Receiver) -> None:
    status = send_webhook(receiver.url("/services/T1/B2/x"), slack_payload("Nightly failed", "log"))
    assert status == 200
    path, headers, _ = receiver.requests[0]
    assert path == "/services/T1/B2/x"
    assert headers["Content-Type"] == "application/json"
    assert receiver.json_bodies() == [{"text": "*Nightly failed*\nlog"}]


def test_http_500_raises_with_masked_url_and_status(failing_receiver: Receiver) -> None:
    url = failing_receiver.url(f"/services/T0001/B0002/{SECRET}")
    with pytest.raises(NotificationError) as info:
        send_webhook(url, {"text": "x"})
    message = str(info.value)
    assert SECRET not in message
    assert f"http://127.0.0.1:{failing_receiver.port}/services/***" in message
    assert "HTTP 500" in message and "receiver says no" in message
    assert info.value.status == 500
    assert len(failing_receiver.requests) == 1  # it was really sent


def test_connection_refused_raises_with_masked_url() -> None:
    url = closed_port_url()
    with pytest.raises(NotificationError, match="ConnectError") as info:
        send_webhook(url, {"text": "x"}, timeout=5)
    assert SECRET not in str(info.value)
    assert info.value.status is None


def test_notify_delivers_to_webhook(receiver: Receiver) -> None:
    result = notify(NotifyConfig(webhook_url=receiver.url()), "Cost alert", "$4.20 > $2.00")
    assert result.delivered == ("webhook",) and result.ok
    assert receiver.json_bodies() == [{"text": "*Cost alert*\n$4.20 > $2.00"}]


def test_notify_logs_failures_instead_of_raising(
    failing_receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.notify")
    config = NotifyConfig(webhook_url=failing_receiver.url(f"/hooks/{SECRET}"))
    with caplog.at_level(logging.ERROR, logger="test.notify"):
        result = notify(config, "Nightly failed", "details", logger=logger)
    assert result.failed == ("webhook",) and not result.ok and result.delivered == ()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "HTTP 500" in errors[0].getMessage()
    assert SECRET not in caplog.text


def test_notify_logs_connection_errors(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        result = notify(NotifyConfig(webhook_url=closed_port_url()), "s", "b", timeout=5)
    assert result.failed == ("webhook",)
    assert "ConnectError" in caplog.text and SECRET not in caplog.text


def test_notify_with_nothing_configured_sends_nothing() -> None:
    result = notify(NotifyConfig(), "s", "b")
    assert result.delivered == () and result.failed == () and result.ok


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXXXXXX",
         "https://hooks.slack.com/services/***"),
        ("https://discord.com/api/webhooks/1234/abcd", "https://discord.com/api/webhooks/***"),
        ("https://example.com/" + "a" * 32, "https://example.com/***"),
        ("http://127.0.0.1:8765/notify", "http://127.0.0.1:8765/notify"),
        ("https://user:pw@example.com/hook?token=abc", "https://user:***@example.com/hook?***"),
        ("https://example.com", "https://example.com"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


# ------------------------------------------------------------------- Prefect blocks


@pytest.fixture
def prefect_api(prefect_server: str) -> str:
    return prefect_server


def test_custom_webhook_block_delivers(prefect_api: str, receiver: Receiver) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    name = f"capture-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(
        name=name,
        url=receiver.url("/prefect"),
        json_data={"text": "{{subject}} :: {{body}}"},
        allow_private_urls=True,
        headers=None,
        cookies=None,
    ).save(name)

    # By bare name (resolved to its type slug) and by slug/name.
    first = notify(NotifyConfig(block=name), "Release failed", "tag push rejected")
    second = notify(NotifyConfig(block=f"custom-webhook/{name}"), "again", "body")

    assert first.delivered == (f"block:{name}",)
    assert second.delivered == (f"block:custom-webhook/{name}",)
    assert receiver.json_bodies() == [
        {"text": "Release failed :: tag push rejected"},
        {"text": "again :: body"},
    ]
    assert receiver.requests[0][0] == "/prefect"


def test_apprise_block_failure_is_logged_not_swallowed(
    prefect_api: str, failing_receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.blocks.notifications import MattermostWebhook

    name = f"mm-{uuid.uuid4().hex[:8]}"
    MattermostWebhook(
        hostname="127.0.0.1", port=failing_receiver.port, token=SecretStr(SECRET)
    ).save(name)
    # The pitfall this guards against: apprise answers a 500 with silence.
    loaded: Any = MattermostWebhook.load(name)
    assert loaded.notify("silently lost") is None
    assert len(failing_receiver.requests) == 1

    with caplog.at_level(logging.ERROR):
        result = notify(NotifyConfig(block=name), "Nightly failed", "see logs")
    assert result.failed == (f"block:{name}",)
    assert len(failing_receiver.requests) == 2  # delivery was really attempted
    assert f"notification block {name!r} failed" in caplog.text


def test_both_channels_are_independent(
    prefect_api: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    config = NotifyConfig(webhook_url=receiver.url(), block="no-such-block-anywhere")
    with caplog.at_level(logging.ERROR):
        result = notify(config, "s", "b")
    assert result.delivered == ("webhook",)
    assert result.failed == ("block:no-such-block-anywhere",)
    assert "no Prefect block named 'no-such-block-anywhere'" in caplog.text
    assert len(receiver.requests) == 1
