"""Benchmark: the latency the LLM gateway adds to each call (live mode).

A fake OpenAI-compatible upstream runs on 127.0.0.1; the same requests are
sent directly to it and through the gateway in live mode (which forwards
with httpx, parses SSE for usage, prices the call and records it). The two
paths are interleaved call by call, so background load on the shared
2-core box hits both alike; we report medians, the difference and the ratio.
Both JSON answers and SSE streams are measured; each path uses its own
keep-alive httpx client, like a test suite's SDK client would.

    .venv/bin/python bench/llm_gateway.py [--calls 300] [--warmup 30]

Prints a Markdown table and writes JSON to bench/results/llm_gateway.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.llm import running_gateway  # noqa: E402
from tasks.llm.fake_upstream import FakeUpstream  # noqa: E402

UPSTREAM_KEY = "sk-bench-upstream-key-000000"


def body(i: int, stream: bool) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful agent."},
            {"role": "user", "content": f"Benchmark question number {i}: what is {i} + {i}?"},
        ],
        "temperature": 0,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


def timed_call(client: httpx.Client, url: str, key: str, payload: dict[str, Any]) -> float:
    """Seconds until the whole answer (every SSE event, for a stream) has arrived."""
    start = time.perf_counter()
    with client.stream("POST", url, json=payload, headers={"Authorization": f"Bearer {key}"}) as r:
        for _ in r.iter_raw():
            pass
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}")
    return time.perf_counter() - start


def summarize(direct: list[float], gateway: list[float]) -> dict[str, float]:
    d, g = statistics.median(direct), statistics.median(gateway)
    return {
        "direct_median_ms": d * 1000,
        "gateway_median_ms": g * 1000,
        "added_ms": (g - d) * 1000,
        "ratio": g / d,
        "direct_p90_ms": statistics.quantiles(direct, n=10)[-1] * 1000,
        "gateway_p90_ms": statistics.quantiles(gateway, n=10)[-1] * 1000,
    }


def run(calls: int, warmup: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with (
        FakeUpstream() as upstream,
        running_gateway("live", upstream_url=upstream.url, api_key=UPSTREAM_KEY) as gateway,
        httpx.Client(timeout=30) as direct_client,
        httpx.Client(timeout=30) as gateway_client,
    ):
        direct_url = upstream.url + "/chat/completions"
        gateway_url = gateway.base_url + "/chat/completions"
        for stream in (False, True):
            direct: list[float] = []
            through: list[float] = []
            for i in range(warmup + calls):
                payload = body(i, stream)
                # Alternate which path goes first so neither always gets a warm cache.
                order = [
                    (direct, direct_client, direct_url, UPSTREAM_KEY),
                    (through, gateway_client, gateway_url, gateway.client_key),
                ]
                if i % 2:
                    order.reverse()
                for samples, client, url, key in order:
                    elapsed = timed_call(client, url, key, payload)
                    if i >= warmup:
                        samples.append(elapsed)
            results["stream" if stream else "json"] = summarize(direct, through)
        recorded = gateway.calls
    results["gateway_calls_recorded"] = len(recorded)
    results["gateway_recorded_latency_median_ms"] = statistics.median(
        c.latency_ms for c in recorded
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "llm_gateway.json"
    )
    args = parser.parse_args()

    results = run(args.calls, args.warmup)
    results["meta"] = {
        "calls_per_path": args.calls,
        "warmup": args.warmup,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
    }
    print(f"{args.calls} calls per path after {args.warmup} warm-up, interleaved\n")
    print(
        "| answer | direct median | via gateway median | added | ratio | direct p90 "
        "| gateway p90 |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in ("json", "stream"):
        r = results[kind]
        print(
            f"| {kind} | {r['direct_median_ms']:.2f} ms | {r['gateway_median_ms']:.2f} ms | "
            f"{r['added_ms']:+.2f} ms | {r['ratio']:.2f}x | {r['direct_p90_ms']:.2f} ms | "
            f"{r['gateway_p90_ms']:.2f} ms |"
        )
    print(
        f"\ngateway recorded {results['gateway_calls_recorded']} calls; "
        f"median latency it recorded: {results['gateway_recorded_latency_median_ms']:.2f} ms"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
