"""Benchmark: how long the process backend takes to give a healthy Neo4j, and its memory.

For each round, every variant is started once (interleaved, so background
load hits all variants alike) and timed from ``start()`` to healthy (this
includes ``neo4j-admin set-initial-password``), then its RSS is read from
/proc/<pid>/status and the stop is timed. A bare JVM on the same classpath
(``AdminTool --version``) is measured in the same rounds as the baseline,
because absolute seconds on a shared 2-core box are noisy.

    .venv/bin/python bench/neo4j_startup.py [--runs 5] [--variants default,c1]

Prints a Markdown table and writes JSON to bench/results/neo4j_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cicd.config import ServiceConfig  # noqa: E402
from tasks.services import provision  # noqa: E402
from tasks.services.neo4j_launch import ADMIN_TOOL, ProcessSettings, java_binary  # noqa: E402
from tasks.services.neo4j_process import Neo4jProcessBackend  # noqa: E402

VARIANTS = {
    # As shipped: class-data sharing on (the archive exists after the first run).
    "default": ProcessSettings(),
    "no-cds": ProcessSettings(class_data_sharing=False),
    # C1 only: less JIT work while starting, slower peak throughput.
    "c1": ProcessSettings(class_data_sharing=False, extra_jvm=("-XX:TieredStopAtLevel=1",)),
}


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from /proc/<pid>/status."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def bare_jvm_seconds(lib: Path, home: Path) -> float:
    home.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    subprocess.run(
        [java_binary(), "-Xmx128m", "-cp", f"{lib}/*", ADMIN_TOOL, "--version"],
        check=True, capture_output=True, timeout=120, env={**os.environ, "NEO4J_HOME": str(home)},
    )
    return time.monotonic() - start


def one_start(settings: ProcessSettings, run_dir: Path) -> dict[str, float]:
    backend = Neo4jProcessBackend(settings, provision_missing=False)
    start = time.monotonic()
    server = backend.start("bench", ServiceConfig(backend="process"), run_dir)
    healthy = time.monotonic() - start
    try:
        rss, hwm = rss_kib(server.pid)
    finally:
        stop_start = time.monotonic()
        server.stop()
        stopped = time.monotonic() - stop_start
    return {"start_s": healthy, "rss_mib": rss / 1024, "hwm_mib": hwm / 1024, "stop_s": stopped}


def du(path: Path) -> str:
    done = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True, check=True)
    return done.stdout.split()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variants", default="default", help=f"comma list of {sorted(VARIANTS)}")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {sorted(VARIANTS)}")

    version = provision.DEFAULT_NEO4J_VERSION
    lib = provision.ensure_neo4j(version)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in ["bare_jvm", *variants]}
    with tempfile.TemporaryDirectory(prefix="neo4j-bench-") as tmp:
        # Pid files of the bench servers stay out of the real state dir.
        os.environ["CICD_HOME"] = str(Path(tmp) / "cicd-home")
        os.environ.setdefault("CICD_NEO4J_HOME", str(lib.parent))
        for round_no in range(args.runs):
            samples["bare_jvm"].append({"start_s": bare_jvm_seconds(lib, Path(tmp) / "bare")})
            for name in variants:
                sample = one_start(VARIANTS[name], Path(tmp) / "run")
                samples[name].append(sample)
                print(f"round {round_no + 1}/{args.runs} {name}: {sample}", file=sys.stderr)

    def median(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name])

    baseline = median("bare_jvm", "start_s")
    reference = median(variants[0], "start_s")
    java_version = subprocess.run(
        [java_binary(), "-version"], capture_output=True, text=True, check=True
    ).stderr.splitlines()[0]
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}, {java_version}",
        "neo4j": version,
        "jar_cache": f"{du(lib)} ({len(list(lib.glob('*.jar')))} jars)",
        "runs": args.runs,
        "samples": samples,
    }
    print(f"\nNeo4j {version}, {args.runs} runs per variant, medians; jars {summary['jar_cache']}")
    print(f"{summary['machine']}; {summary['date']}\n")
    def paired_ratio(name: str, against: str) -> float:
        """Median of per-round ratios: both ran back to back under the same load."""
        return statistics.median(
            mine["start_s"] / theirs["start_s"]
            for mine, theirs in zip(samples[name], samples[against], strict=True)
        )

    print(
        f"| variant | start→healthy s | ratio to bare JVM | ratio to {variants[0]} "
        f"(median of per-round ratios) | RSS MiB | peak RSS MiB | stop s |"
    )
    print("|---|---|---|---|---|---|---|")
    print(f"| bare JVM (AdminTool --version) | {baseline:.2f} | 1.00 | | | | |")
    for name in variants:
        start_s = median(name, "start_s")
        print(
            f"| {name} | {start_s:.2f} (min {min(s['start_s'] for s in samples[name]):.2f}, "
            f"max {max(s['start_s'] for s in samples[name]):.2f}) | {start_s / baseline:.1f} | "
            f"{start_s / reference:.2f} ({paired_ratio(name, variants[0]):.2f}) | "
            f"{median(name, 'rss_mib'):.0f} | {median(name, 'hwm_mib'):.0f} | "
            f"{median(name, 'stop_s'):.2f} |"
        )
    out = ROOT / "bench" / "results" / "neo4j_startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
