"""Benchmark baselines: real pytest-benchmark runs of a small suite made in tmp,
plus unit tests of the statistics on synthetic data."""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
from pathlib import Path

import pytest

from cicd.config import BenchmarkConfig
from cicd.errors import BadInput, ConfigError
from tasks.benchmark_baseline import (
    Baseline,
    BenchmarkError,
    Stats,
    baseline_from_runs,
    load_baseline,
    parse_benchmark_json,
    write_baseline,
)
from tasks.benchmark_stats import (
    compare,
    format_seconds,
    render_comparison_markdown,
)
from tasks.benchmarks import check_benchmarks, run_benchmarks
from tasks.rank_statistics import mann_whitney_greater

HOT = "tests/performance/test_perf.py::test_hot"
COLD = "tests/performance/test_perf.py::test_cold"

# The cost of each benchmark is a loop count scaled by an env var, so "the code
# got slower" is a real slowdown of the measured function, not a faked number.
PERF_SUITE = """
import os

HOT_LOOPS = int(4000 * float(os.environ.get("BENCH_HOT_FACTOR", "1")))
COLD_LOOPS = int(4000 * float(os.environ.get("BENCH_COLD_FACTOR", "1")))


def spin(loops):
    total = 0
    for i in range(loops):
        total += i * i
    return total


def test_hot(benchmark):
    assert benchmark(spin, HOT_LOOPS) > 0


def test_cold(benchmark):
    assert benchmark(spin, COLD_LOOPS) > 0


def test_not_a_benchmark():
    assert True
"""


def make_suite(root: Path, body: str = PERF_SUITE) -> Path:
    (root / "tests" / "performance").mkdir(parents=True)
    (root / "tests" / "performance" / "test_perf.py").write_text(body)
    # Short calibration keeps one round near a second; the suite's own config,
    # as a target project would set it.
    (root / "pytest.ini").write_text(
        "[pytest]\naddopts = --benchmark-max-time=0.15 --benchmark-min-rounds=30\n"
    )
    return root


def suite_env(**factors: float) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env["BENCH_HOT_FACTOR"] = str(factors.get("hot", 1.0))
    env["BENCH_COLD_FACTOR"] = str(factors.get("cold", 1.0))
    return env


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Baseline]:
    """The suite plus a baseline taken at the normal cost, written and re-read."""
    root = make_suite(tmp_path_factory.mktemp("target"))
    runs = run_benchmarks(
        sys.executable, root, ["tests/performance"], 5, suite_env(), root / "out-baseline", 300
    )
    path = write_baseline(root / "benchmarks" / "baseline.json", baseline_from_runs(runs))
    return root, load_baseline(path)


def run_current(root: Path, name: str, **factors: float) -> list[dict[str, Stats]]:
    return run_benchmarks(
        sys.executable, root, ["tests/performance"], 5, suite_env(**factors), root / name, 300
    )


# ------------------------------------------------------------------ real suite runs


def test_baseline_file_is_versioned_with_per_round_medians(suite: tuple[Path, Baseline]) -> None:
    root, baseline = suite
    data = json.loads((root / "benchmarks" / "baseline.json").read_text())
    assert data["version"] == 1
    assert data["rounds"] == 5
    assert set(data["benchmarks"]) == {HOT, COLD}  # the plain test is not a benchmark
    assert len(data["benchmarks"][HOT]["round_medians"]) == 5
    assert baseline.figure(HOT) == min(data["benchmarks"][HOT]["round_medians"]) > 0
    # Every round left its own JSON and log behind.
    assert sorted(p.name for p in (root / "out-baseline").glob("round-*.json")) == [
        f"round-{i}.json" for i in range(1, 6)
    ]


def test_double_cost_is_a_regression_naming_the_benchmark(suite: tuple[Path, Baseline]) -> None:
    root, baseline = suite
    comparison = compare(baseline, run_current(root, "out-slow", hot=2.0), threshold=0.10)

    assert [row.key for row in comparison.regressions] == [HOT]
    row = comparison.regressions[0]
    assert row.current is not None and row.baseline is not None
    assert row.p_value is not None and row.p_value <= 0.05
    assert not comparison.ok
    # The untouched benchmark is not a regression. It may read as "improved":
    # the baseline's rounds and these ran apart on a shared machine whose speed
    # drifts (CI saw -34 %, p = 0.008, at a lower load than the baseline's).
    cold = next(r for r in comparison.rows if r.key == COLD)
    assert cold.verdict in ("ok", "improved"), cold
    # The doubled cost against the untouched one, which drifted with the machine:
    # CI once measured test_hot at +33.5 % only, the machine having sped up
    # between the baseline and these rounds.
    assert cold.current is not None and cold.baseline is not None
    drift = cold.current / cold.baseline
    assert (row.current / row.baseline) / drift > 1.4, (row, cold)

    report = render_comparison_markdown(comparison)
    regression_line = next(line for line in report.splitlines() if "REGRESSION" in line)
    assert HOT in regression_line
    assert format_seconds(row.baseline) in regression_line
    assert format_seconds(row.current) in regression_line
    assert "no regression" not in report


def test_missing_baseline_fails_before_running(tmp_path: Path) -> None:
    root = make_suite(tmp_path / "target")
    config = BenchmarkConfig(paths=["tests/performance"], baseline="benchmarks/baseline.json")
    with pytest.raises(BadInput, match=r"benchmarks/baseline\.json not found"):
        check_benchmarks(sys.executable, root, config, suite_env(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_single_round_screen_lets_the_threshold_decide(
    suite: tuple[Path, Baseline], tmp_path: Path
) -> None:
    root, _ = suite
    runs = run_benchmarks(
        sys.executable, root, ["tests/performance"], 1, suite_env(cold=3.0), tmp_path, 300
    )
    comparison = compare(load_baseline(root / "benchmarks" / "baseline.json"), runs, 0.10)
    # 5 baseline rounds vs 1 current round can still reach p = 1/6 only: not
    # significant at 0.05, so the threshold alone decides and the rule says so.
    cold = next(r for r in comparison.rows if r.key == COLD)
    assert cold.verdict == "regression", cold
    assert "threshold alone decides" in cold.rule


def test_failing_benchmark_is_an_error_with_the_output(tmp_path: Path) -> None:
    root = make_suite(
        tmp_path, PERF_SUITE + "\n\ndef test_broken(benchmark):\n    benchmark(lambda: 1 / 0)\n"
    )
    with pytest.raises(BenchmarkError, match=r"(?s)round 1 of 3 failed.*ZeroDivisionError"):
        run_benchmarks(sys.executable, root, ["tests/performance"], 3, suite_env(), tmp_path, 120)


def test_suite_without_benchmarks_is_bad_input(tmp_path: Path) -> None:
    root = make_suite(tmp_path, "def test_plain():\n    assert True\n")
    with pytest.raises(BadInput, match="benchmark` fixture"):
        run_benchmarks(sys.executable, root, ["tests/performance"], 1, suite_env(), tmp_path, 120)


# ----------------------------------------------------------------- baseline files


def test_corrupt_baseline_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text('{"version": 1, "benchmarks": {"a": {"round_medians": [0.1,')
    with pytest.raises(ConfigError, match=r"baseline\.json: not valid JSON \(line 1"):
        load_baseline(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"version": 2, "benchmarks": {}}, "field 'version': expected 1, got 2"),
        ({"version": 1, "benchmarks": {}}, "expected a non-empty object"),
        ({"version": 1, "benchmarks": {"t": {"round_medians": []}}}, "round_medians"),
        (
            {"version": 1, "benchmarks": {"t": {"round_medians": [0.1, "fast"]}}},
            r"round_medians\[1\]': expected a number, got 'fast'",
        ),
        ({"version": 1, "benchmarks": {"t": {"round_medians": [0.0]}}}, "positive"),
        ([1, 2], "expected a JSON object, got list"),
    ],
)
def test_invalid_baselines_are_errors(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message) as info:
        load_baseline(path)
    assert str(path) in str(info.value)


def test_raw_pytest_benchmark_json_is_a_one_round_baseline(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(
        json.dumps(
            {
                "machine_info": {},
                "datetime": "2026-01-01T00:00:00",
                "benchmarks": [
                    {
                        "name": "test_a",
                        "fullname": "t.py::test_a",
                        "stats": {
                            "min": 1.0,
                            "max": 3.0,
                            "mean": 2.0,
                            "median": 2.0,
                            "stddev": 0.5,
                            "rounds": 3,
                            "data": [1.0, 3.0, 1.5],
                        },
                    }
                ],
            }
        )
    )
    baseline = load_baseline(path)
    assert baseline.benchmarks == {"t.py::test_a": (1.5,)}  # median of the raw data
    assert baseline.names == {"t.py::test_a": "test_a"}


def test_parse_benchmark_json_reports_bad_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"benchmarks\[0\]\.stats\.median: expected a number"):
        parse_benchmark_json(
            {
                "benchmarks": [
                    {
                        "name": "a",
                        "stats": {"min": 1, "max": 1, "mean": 1, "median": None, "stddev": 0},
                    }
                ]
            }
        )
    missing = tmp_path / "nope.json"
    with pytest.raises(BadInput, match=r"nope\.json: file not found"):
        parse_benchmark_json(missing)


# -------------------------------------------------------------------- statistics


def stats(name: str, median: float) -> Stats:
    return Stats(
        name=name,
        fullname=name,
        min=median,
        max=median,
        mean=median,
        median=median,
        stddev=0.0,
        rounds=1,
    )


def rounds_of(**series: list[float]) -> list[dict[str, Stats]]:
    length = len(next(iter(series.values())))
    return [
        {name: stats(name, values[i]) for name, values in series.items()} for i in range(length)
    ]


def baseline_of(**series: list[float]) -> Baseline:
    return Baseline(path="b.json", benchmarks={k: tuple(v) for k, v in series.items()})


def brute_force_p(x: list[float], y: list[float]) -> float:
    """P(U_y >= observed) by enumerating every split of the pooled values."""
    pooled = x + y

    def u_of(ys: list[float], xs: list[float]) -> float:
        return sum((b > a) + 0.5 * (b == a) for a in xs for b in ys)

    observed = u_of(y, x)
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(y)):
        ys = [pooled[i] for i in chosen]
        xs = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        total += 1
        hits += u_of(ys, xs) >= observed - 1e-9
    return hits / total


def test_mann_whitney_extremes() -> None:
    assert mann_whitney_greater([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(1 / 252)
    assert mann_whitney_greater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert mann_whitney_greater([1, 1, 1], [1, 1, 1]) == pytest.approx(1.0)


def test_mann_whitney_exact_matches_enumeration_with_ties() -> None:
    rng = random.Random(7)
    for _ in range(30):
        n_x, n_y = rng.randint(1, 6), rng.randint(1, 6)
        # Few distinct values, so many ties.
        x = [float(rng.randint(0, 5)) for _ in range(n_x)]
        y = [float(rng.randint(0, 6)) for _ in range(n_y)]
        assert mann_whitney_greater(x, y) == pytest.approx(brute_force_p(x, y)), (x, y)


def test_mann_whitney_normal_approximation_for_large_samples() -> None:
    rng = random.Random(3)
    same = [rng.gauss(1.0, 0.1) for _ in range(60)]
    shifted = [v + 0.3 for v in (rng.gauss(1.0, 0.1) for _ in range(60))]
    assert mann_whitney_greater(same[:30], same[30:]) > 0.01
    assert mann_whitney_greater(same, shifted) < 1e-6
    assert mann_whitney_greater(shifted, same) > 0.999


def test_noisy_but_unchanged_series_passes() -> None:
    # Per-round medians with one-sided bursts of interference (up to +60%) on a
    # 1 ms benchmark; the code did not change, so nothing may be flagged.
    rng = random.Random(11)
    for _ in range(200):

        def noisy() -> list[float]:
            def one() -> float:
                burst = rng.uniform(0, 0.6) if rng.random() < 0.3 else 0.0
                return 0.001 * (1 + abs(rng.gauss(0, 0.03)) + burst)

            return [one() for _ in range(5)]

        comparison = compare(baseline_of(b=noisy()), rounds_of(b=noisy()), threshold=0.10)
        assert comparison.ok, comparison.rows


def test_one_lucky_baseline_round_is_not_a_regression() -> None:
    # The fastest baseline round is 20% below the rest; the current rounds sit in
    # the middle of the baseline's: the threshold is crossed, the shift is not real.
    baseline = baseline_of(b=[1.0, 1.3, 1.25, 1.35, 1.3])
    comparison = compare(baseline, rounds_of(b=[1.2, 1.3, 1.28, 1.22, 1.3]), threshold=0.10)
    row = comparison.rows[0]
    assert row.change is not None and row.change > 0.10
    assert row.verdict == "ok"
    assert "noise" in row.rule


def test_verdicts_regression_improved_new_missing() -> None:
    baseline = baseline_of(
        slow=[1.0, 1.01, 1.02, 1.0, 1.03],
        fast=[1.0, 1.02, 1.01, 1.0, 1.0],
        same=[1.0, 1.01, 1.0, 1.02, 1.0],
        gone=[1.0],
    )
    current = rounds_of(
        slow=[1.5, 1.52, 1.49, 1.55, 1.5],
        fast=[0.5, 0.51, 0.5, 0.52, 0.5],
        same=[1.01, 1.0, 1.02, 1.0, 1.01],
        added=[2.0, 2.0, 2.0, 2.0, 2.0],
    )
    comparison = compare(baseline, current, threshold=0.10)
    verdicts = {row.key: row.verdict for row in comparison.rows}
    assert verdicts == {
        "slow": "regression",
        "fast": "improved",
        "same": "ok",
        "gone": "missing",
        "added": "new",
    }
    slow = comparison.regressions[0]
    assert slow.baseline == 1.0 and slow.current == 1.49
    assert slow.change == pytest.approx(0.49)
    report = render_comparison_markdown(comparison)
    assert "1 regression(s)" in report
    assert "missing: `gone`" in report


def test_threshold_is_respected() -> None:
    baseline = baseline_of(b=[1.0, 1.0, 1.0, 1.0, 1.0])
    current = rounds_of(b=[1.08, 1.09, 1.08, 1.09, 1.08])  # significant but +8%
    assert compare(baseline, current, threshold=0.10).ok
    assert not compare(baseline, current, threshold=0.05).ok


def test_stats_center_uses_raw_data_when_present() -> None:
    with_data = Stats(
        name="a",
        fullname="a",
        min=1,
        max=9,
        mean=4,
        median=4.0,
        stddev=1,
        rounds=3,
        data=(1.0, 2.0, 9.0),
    )
    assert with_data.center == 2.0
    assert stats("a", 4.0).center == 4.0


def test_format_seconds_units() -> None:
    assert format_seconds(1.5) == "1.5 s"
    assert format_seconds(0.0025) == "2.5 ms"
    assert format_seconds(0.0000031) == "3.1 µs"
    assert format_seconds(4e-8) == "40 ns"
    assert format_seconds(None) == "-"
