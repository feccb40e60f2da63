"""The webhook receiver under a flood, across a restart, and against hostile bodies.

Real uvicorn on 127.0.0.1, real signed HTTP requests, the receiver's injected
``start`` as the boundary that counts runs (``bench/webhook_load.py``), and once
against the session's real Prefect server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.webhook_load import (
    SECRET,
    Delivery,
    RecordingStart,
    deliveries,
    measure,
    send_all,
    serving,
)
from deployments.webhook import StartFn, start_with_prefect
from deployments.webhook_store import DeliveryStore, trigger_key


@pytest.mark.slow
def test_flood_of_500_signed_deliveries_over_250_ids(tmp_path: Path) -> None:
    figures = measure(500, 250, start_ms=20, db=tmp_path / "deliveries.db")
    print(json.dumps(figures))  # the figures, for bench/README.md (pytest -s)

    flood = figures["flood"]
    assert flood["errors"] == {}  # no reset, refusal or timeout
    assert flood["answered"] == 500
    assert flood["statuses"] == {"202 started": 250, "200 duplicate": 250}
    assert figures["runs_started"] == figures["distinct_runs"] == 250
    # Recorded above; asserted loosely: the box is shared (bench/README.md has the figure).
    assert flood["p95_s"] < 10
    replay = figures["replay_after_restart"]
    assert replay["statuses"] == {"200 duplicate": 250} and replay["errors"] == {}
    assert figures["replay_runs_started"] == 0


def test_replay_after_restart_answers_the_earlier_run(tmp_path: Path) -> None:
    db = tmp_path / "deliveries.db"
    batch = deliveries(3, 3)
    first = RecordingStart()
    with serving(first, db) as server:
        answers = [_post(server.url, delivery) for delivery in batch]
    assert [a.status_code for a in answers] == [202, 202, 202]
    second = RecordingStart()
    with serving(second, db) as server:
        replayed = [_post(server.url, delivery) for delivery in batch]
    assert second.calls == []
    assert [a.status_code for a in replayed] == [200, 200, 200]
    assert {a.json()["status"] for a in replayed} == {"duplicate"}
    # The runs the first receiver created, read back from the database.
    assert [a.json()["flow_run_id"] for a in replayed] == [a.json()["flow_run_id"] for a in answers]


def _post(url: str, delivery: Delivery) -> httpx.Response:
    return httpx.post(url + "hook", content=delivery.body, headers=delivery.headers(), timeout=10)


def test_a_start_interrupted_before_its_run_was_recorded_is_not_started_again(
    tmp_path: Path,
) -> None:
    db = tmp_path / "deliveries.db"
    delivery = deliveries(1, 1)[0]
    # What a receiver killed inside start() leaves: the claim, no run.
    store = DeliveryStore(db)
    claimed = store.claim(delivery.delivery_id, trigger_key("integration", {}))
    store.close()
    assert claimed.new
    start = RecordingStart()
    with serving(start, db) as server:
        response = _post(server.url, delivery)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "duplicate"
    assert response.json()["flow_run_id"] is None
    assert "interrupted" in response.json()["reason"]
    assert start.calls == []


def _signed_post(url: str, body: bytes) -> httpx.Response:
    import hashlib
    import hmac

    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={digest}",
    }
    return httpx.post(url + "hook", content=body, headers=headers, timeout=10)


@pytest.mark.parametrize("depth", [100_000, 1_500, 65])
def test_deeply_nested_body_is_400_quickly(tmp_path: Path, depth: int) -> None:
    start = RecordingStart()
    with serving(start, tmp_path / "deliveries.db") as server:
        began = time.monotonic()
        response = _signed_post(server.url, b"[" * depth + b"]" * depth)
        took = time.monotonic() - began
        # The receiver is still there for the next delivery.
        assert httpx.get(server.url + "health", timeout=10).status_code == 200
    assert response.status_code == 400, response.text
    assert "nested deeper than 64" in response.json()["error"]
    assert took < 5
    assert start.calls == []


def test_listen_backlog_is_not_the_stdlib_five(tmp_path: Path) -> None:
    with serving(RecordingStart(), tmp_path / "deliveries.db") as server:
        # Connections the accept loop has not taken yet wait in the backlog: 200
        # opened at once, with no request sent, must all be accepted by the kernel.
        sockets = []
        try:
            for _ in range(200):
                sockets.append(socket.create_connection(server.socket.getsockname(), timeout=5))
        finally:
            for sock in sockets:
                sock.close()
        assert server.backlog >= 1024


def test_concurrent_deliveries_create_runs_on_the_real_prefect_server(
    prefect_server: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    family = f"webhook-load-{uuid.uuid4().hex[:8]}"
    start = start_with_prefect(f"{family}-{{flow}}/{{flow}}")
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(f"{family}-integration")
        deployment_id = client.create_deployment(flow_id=flow_id, name="integration")
        try:
            counting = _Counting(start)
            with serving(counting, tmp_path / "deliveries.db") as server:
                sent = send_all(server.url, deliveries(40, 20))
            assert sent.errors == {}
            assert sent.statuses == {"202 started": 20, "200 duplicate": 20}
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            assert len(runs) == 20 == counting.calls
            assert len({json.dumps(r.parameters, sort_keys=True) for r in runs}) == 20
            for run in runs:
                client.delete_flow_run(run.id)
        finally:
            client.delete_deployment(deployment_id)


class _Counting:
    """The real ``start``, counted."""

    def __init__(self, start: StartFn) -> None:
        self.start = start
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, deployment: str, parameters: dict[str, Any]) -> str:
        run_id = self.start(deployment, parameters)
        with self._lock:
            self.calls += 1
        return run_id
