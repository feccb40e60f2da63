"""``agentkit-serve --port P``: ``/healthz``, ``/metrics`` (Prometheus text) and
the agent on every other path; standard library only.

The metrics follow Prometheus' exposition format
(https://prometheus.io/docs/instrumenting/exposition_formats/): requests by
status and a latency histogram. Probes (health, metrics) are not counted.
SIGTERM stops accepting connections and lets requests in flight finish.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

import agentkit_service as flags
from agentkit import Agent

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PROBES = ("/healthz", "/metrics")


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.buckets = [0] * len(BUCKETS)
        self.latency_sum = 0.0

    def observe(self, status: int, seconds: float) -> None:
        with self.lock:
            self.by_status[status] = self.by_status.get(status, 0) + 1
            self.latency_sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1

    def next_request(self) -> int:
        with self.lock:
            self.requests += 1
            return self.requests

    def render(self) -> str:
        with self.lock:
            count = sum(self.by_status.values())
            lines = ["# TYPE http_requests_total counter"]
            lines += [
                f'http_requests_total{{status="{s}"}} {n}'
                for s, n in sorted(self.by_status.items())
            ]
            lines.append("# TYPE http_request_duration_seconds histogram")
            lines += [
                f'http_request_duration_seconds_bucket{{le="{b}"}} {n}'
                for b, n in zip(BUCKETS, self.buckets, strict=True)
            ]
            lines.append(f'http_request_duration_seconds_bucket{{le="+Inf"}} {count}')
            lines.append(f"http_request_duration_seconds_sum {self.latency_sum:.6f}")
            lines.append(f"http_request_duration_seconds_count {count}")
        return "\n".join(lines) + "\n"


METRICS = Metrics()
STARTED = time.monotonic()
RELEASE = os.environ.get("CICD_RELEASE", "dev")  # set by cicd-flows' deploy


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/healthz":
            healthy = flags.HEALTHY and not (
                flags.HEALTHY_SECONDS and time.monotonic() - STARTED > flags.HEALTHY_SECONDS
            )
            self._answer(200 if healthy else 503, "ok\n" if healthy else "no\n")
        elif self.path == "/metrics":
            self._answer(200, METRICS.render(), "text/plain; version=0.0.4")
        else:
            start = time.perf_counter()
            number = METRICS.next_request()
            if flags.DELAY_SECONDS:
                time.sleep(flags.DELAY_SECONDS)
            if flags.ERROR_EVERY and number % flags.ERROR_EVERY == 1 % flags.ERROR_EVERY:
                status, body = 500, "error\n"
            else:
                status, body = 200, Agent().process("What is 2 + 2?").text + "\n"
            self._answer(status, body)
            METRICS.observe(status, time.perf_counter() - start)

    def _answer(self, status: int, body: str, kind: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Release", RELEASE)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # one line per request would flood the replica's log


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for requests in flight
    block_on_close = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="agentkit-serve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    server = Server((args.host, args.port), Handler)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
