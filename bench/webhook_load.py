"""Benchmark: the webhook receiver under a flood of signed deliveries (loopback).

``--requests`` signed ``push`` deliveries are sent at once, each on its own
connection (no keep-alive, as a git host's delivery workers do), carrying
``--distinct`` delivery ids (each id twice when requests = 2 x distinct, as a
git host that redelivers on a timeout), each id for a different commit. The
receiver runs in this process on a free port of 127.0.0.1 with a ``start`` that
records its calls and answers after ``--start-ms`` (a Prefect API call's time);
the client is a child process of its own (``send``), as a git host is.

Counted: connection errors (resets, refusals, timeouts), answers by status,
runs started (``start`` calls), answer times (from send to the end of the
answer: p50, p95, max). Then the receiver is stopped and started again on the
same deliveries database, every delivery is replayed, and the runs started by
the replay are counted (must be 0).

    .venv/bin/python bench/webhook_load.py [--requests 500] [--distinct 250] [--start-ms 20]

Prints one JSON object and writes it to bench/results/webhook_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments.webhook import StartFn, WebhookServer, make_server  # noqa: E402
from deployments.webhook_store import DeliveryStore  # noqa: E402

SECRET = "webhook-load-secret"
REPO = "https://git.example.com/acme/app.git"


class RecordingStart:
    """The receiver's injected ``start``: records each call, answers after ``delay``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, deployment: str, parameters: dict[str, Any]) -> str:
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.calls.append((deployment, parameters))
            return f"run-{len(self.calls)}"


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    body: bytes

    def headers(self) -> dict[str, str]:
        digest = hmac.new(SECRET.encode(), self.body, hashlib.sha256).hexdigest()
        return {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": self.delivery_id,
            "X-Hub-Signature-256": f"sha256={digest}",
        }


def deliveries(requests: int, distinct: int) -> list[Delivery]:
    """``requests`` deliveries over ``distinct`` ids, each id a push of its own commit."""
    unique = []
    for n in range(distinct):
        payload = {
            "ref": "refs/heads/main",
            "before": f"{n:040x}",
            "after": f"{n + 1:040x}",
            "repository": {"clone_url": REPO, "full_name": "acme/app"},
        }
        unique.append(Delivery(f"load-{n:05d}", json.dumps(payload).encode()))
    return [unique[n % distinct] for n in range(requests)]


@dataclass
class LoadResult:
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)
    wall: float = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "statuses": dict(sorted(self.statuses.items())),
            "errors": dict(self.errors),
            "answered": sum(self.statuses.values()),
            "p50_s": round(statistics.median(self.seconds), 4) if self.seconds else None,
            "p95_s": round(self.percentile(0.95), 4),
            "max_s": round(max(self.seconds), 4) if self.seconds else None,
            "wall_s": round(self.wall, 3),
        }


def _request(host: str, port: int, delivery: Delivery) -> bytes:
    lines = ["POST /hook HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in delivery.headers().items()]
    lines.append(f"Content-Length: {len(delivery.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + delivery.body


async def _exchange(host: str, port: int, request: bytes) -> tuple[int, dict[str, Any]]:
    """One request on its own connection; the answer's status and JSON body."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await reader.readexactly(length)
    finally:
        writer.close()
    parts = status_line.split()
    if len(parts) < 2:
        raise ConnectionError(f"no HTTP answer: {status_line!r}")
    return int(parts[1]), json.loads(body)


async def _send_all(url: str, batch: list[Delivery], timeout: float) -> LoadResult:
    """Every request at once, each on a connection of its own (no keep-alive).

    A raw asyncio client, not httpx: httpx's own per-request cost made the
    client, not the receiver, the bottleneck (measured: p95 2.6 s against a
    bare asyncio server that answers at once).
    """
    result = LoadResult()
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    requests = [_request(host, port, d) for d in batch]
    gate = asyncio.Event()

    async def one(request: bytes) -> None:
        await gate.wait()
        began = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                status, data = await _exchange(host, port, request)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            result.errors[type(exc).__name__] += 1
            return
        result.seconds.append(time.perf_counter() - began)
        result.statuses[f"{status} {data.get('status', '?')}"] += 1

    tasks = [asyncio.create_task(one(r)) for r in requests]
    began = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    result.wall = time.perf_counter() - began
    return result


def send_all(url: str, batch: list[Delivery], timeout: float = 60.0) -> LoadResult:
    return asyncio.run(_send_all(url, batch, timeout))


def send_from_another_process(url: str, requests: int, distinct: int) -> dict[str, Any]:
    """The flood sent by a child process (``send`` below): the client's work does not
    compete with the receiver's for this process's GIL, as a git host's would not."""
    argv = [sys.executable, str(Path(__file__).resolve()), "send", url]
    argv += ["--requests", str(requests), "--distinct", str(distinct)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the load client failed ({done.returncode}): {done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


@contextmanager
def serving(start: StartFn, db: Path) -> Iterator[WebhookServer]:
    """A receiver on a free loopback port, its deliveries in ``db``; stopped on exit."""
    server = make_server("127.0.0.1", 0, SECRET, start, store=DeliveryStore(db))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        httpx.get(server.url + "health", timeout=10).raise_for_status()
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def measure(requests: int, distinct: int, start_ms: float, db: Path) -> dict[str, Any]:
    start = RecordingStart(start_ms / 1000)
    with serving(start, db) as server:
        flood = send_from_another_process(server.url, requests, distinct)
    runs = len(start.calls)
    # A restart on the same database: every delivery replayed starts nothing.
    again = RecordingStart()
    with serving(again, db) as server:
        replay = send_from_another_process(server.url, distinct, distinct)
    return {
        "requests": requests,
        "distinct": distinct,
        "start_ms": start_ms,
        "flood": flood,
        "runs_started": runs,
        "distinct_runs": len({json.dumps(call, sort_keys=True) for call in start.calls}),
        "replay_after_restart": replay,
        "replay_runs_started": len(again.calls),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--distinct", type=int, default=250)
    parser.add_argument("--start-ms", type=float, default=20.0)
    if sys.argv[1:2] == ["send"]:  # the client half, run by send_from_another_process
        parser.add_argument("send", choices=["send"])
        parser.add_argument("url")
        args = parser.parse_args()
        sent = send_all(args.url, deliveries(args.requests, args.distinct))
        print(json.dumps(sent.summary()))
        return 0
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(args.requests, args.distinct, args.start_ms, Path(tmp) / "deliveries.db")
    text = json.dumps(figures, indent=2)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "webhook_load.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
