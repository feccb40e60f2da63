"""What the job sandbox adds to a step's start: ``run_step(["true"])`` unboxed
(``CICD_SANDBOX=off``) and boxed (bubblewrap), interleaved, medians.

    .venv/bin/python bench/sandbox_start.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from tasks.job import Deadline, run_step


def one(mode: str, workspace: Path) -> float:
    os.environ["CICD_SANDBOX"] = mode
    started = time.perf_counter()
    step = run_step("true", ["/usr/bin/true"], cwd=workspace, env=dict(os.environ),
                    deadline=Deadline(60))  # fmt: skip
    elapsed = time.perf_counter() - started
    assert step.ok, step
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        samples: dict[str, list[float]] = {"off": [], "required": []}
        for _ in range(args.runs):
            for mode in samples:
                samples[mode].append(one(mode, workspace))
    off = statistics.median(samples["off"])
    boxed = statistics.median(samples["required"])
    print(f"runs {args.runs}: unboxed median {off * 1000:.1f} ms, boxed median "
          f"{boxed * 1000:.1f} ms, added {(boxed - off) * 1000:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
