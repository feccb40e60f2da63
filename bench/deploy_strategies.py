"""Benchmark: deploys of the sample's HTTP service behind nginx, per strategy.

For each strategy, ``--rounds`` deploys alternate between two good releases
(``main`` and ``release-good`` of the sample repositories) while a loopback
load generator sends ``--rate`` requests per second through the proxy, one
connection each. Then ``--rounds`` canary deploys of ``release-errors`` (5 %
of answers are 500) are rolled back automatically.

Measured: the proxy switch (new configuration written, SIGHUP, the new
generation answering, every old worker gone), the whole deploy, the failed
requests (anything but 200) during it; for rollbacks, from the failing
verdict to the stable set serving alone again ("detection to restored"), and
from the first 500 the load generator saw to restored.

    .venv/bin/python bench/deploy_strategies.py [--rounds 3] [--rate 80]

Prints a Markdown table and writes JSON to bench/results/deploy_strategies.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
_HOME = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
os.environ["CICD_HOME"] = str(_HOME / "cicd-home")

from tasks.deploy import artifacts  # noqa: E402
from tasks.deploy import environment as deploys  # noqa: E402
from tasks.deploy.state import EnvironmentState  # noqa: E402
from tests.deploy_support import LoadGenerator, build_releases, settings  # noqa: E402
from tests.sample_repos import build_sample_repos  # noqa: E402

PROJECT = "agentkit-sample"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=80.0)
    args = parser.parse_args()
    repo = build_sample_repos(_HOME / "repos")["agentkit"]
    built = build_releases(repo, _HOME / "wheels")
    rel = {b: artifacts.keep(w.wheel, w.commit, w.ref) for b, w in built.items()}
    rows: list[dict[str, object]] = []
    try:
        for kind in ("immediate", "rolling", "blue-green", "canary"):
            env = f"bench-{kind}"
            conf = settings(kind, replicas=2)  # type: ignore[arg-type]
            deploys.deploy_release(PROJECT, env, conf, rel["main"])
            state = EnvironmentState.load(PROJECT, env)
            assert state is not None
            url = f"http://127.0.0.1:{state.proxy_port}/"
            switches: list[float] = []
            durations: list[float] = []
            failed = requests = 0
            for i in range(args.rounds):
                target = rel["release-good" if i % 2 == 0 else "main"]
                started = time.monotonic()
                with LoadGenerator(url, rate=args.rate) as load:
                    result = deploys.deploy_release(PROJECT, env, conf, target)
                assert result.outcome == "success", result.reason
                durations.append(time.monotonic() - started)
                switches += result.switch_seconds
                failed += len(load.failed)
                requests += len(load.results)
            rows.append(
                {
                    "strategy": kind,
                    "deploys": args.rounds,
                    "switch_median_s": median(switches),
                    "switch_max_s": max(switches),
                    "deploy_median_s": median(durations),
                    "requests": requests,
                    "failed": failed,
                }
            )
            deploys.stop_environment(PROJECT, env)
        env = "bench-rollback"
        conf = settings("canary", replicas=2)
        deploys.deploy_release(PROJECT, env, conf, rel["main"])
        state = EnvironmentState.load(PROJECT, env)
        assert state is not None
        url = f"http://127.0.0.1:{state.proxy_port}/"
        restored: list[float] = []
        first_error_to_restored: list[float] = []
        failed = requests = 0
        for _ in range(args.rounds):
            with LoadGenerator(url, rate=args.rate) as load:
                result = deploys.deploy_release(PROJECT, env, conf, rel["release-errors"])
                done = time.monotonic()
            assert result.outcome == "rolled-back", result.reason
            assert result.restored_seconds is not None
            restored.append(result.restored_seconds)
            errors = [r[0] for r in load.failed]
            if errors:
                first_error_to_restored.append(done - min(errors))
            failed += len(load.failed)
            requests += len(load.results)
        rows.append(
            {
                "strategy": "canary rollback (5 % errors)",
                "deploys": args.rounds,
                "restored_median_s": median(restored),
                "restored_max_s": max(restored),
                "first_error_to_restored_median_s": median(first_error_to_restored),
                "requests": requests,
                "failed": failed,
            }
        )
        deploys.stop_environment(PROJECT, env)
    finally:
        for name in ("immediate", "rolling", "blue-green", "canary", "rollback"):
            deploys.stop_environment(PROJECT, f"bench-{name}")
        shutil.rmtree(_HOME, ignore_errors=True)
    print("| strategy | deploys | switch median | switch max | deploy median | requests | failed |")
    print("|---|---|---|---|---|---|---|")
    for row in rows[:-1]:
        print(
            f"| {row['strategy']} | {row['deploys']} | {row['switch_median_s']:.3f} s | "
            f"{row['switch_max_s']:.3f} s | {row['deploy_median_s']:.2f} s | "
            f"{row['requests']} | {row['failed']} |"
        )
    last = rows[-1]
    print(
        f"\nrollback: detection to restored median {last['restored_median_s']:.3f} s "
        f"(max {last['restored_max_s']:.3f} s); first 500 seen to restored median "
        f"{last['first_error_to_restored_median_s']:.3f} s; failed {last['failed']} of "
        f"{last['requests']} requests"
    )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "deploy_strategies.json").write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "load": os.getloadavg(),
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
