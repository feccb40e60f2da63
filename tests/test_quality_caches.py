"""The quality tools side by side, and the mypy cache kept between runs
(tasks/tool_caches.py). The verdicts with a warm cache, red commits included,
are in tests/test_quality_pins.py (real mypy through the CLI)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from cicd.results import StepResult
from tasks import progress, tool_caches
from tasks.quality import run_side_by_side
from tasks.tool_caches import ToolCaches


def _cache(path: Path, content: str) -> Path:
    (path / "3.11").mkdir(parents=True)
    (path / "3.11" / "cache.0.db").write_text(content)
    return path


def test_a_published_cache_seeds_the_next_workspace(tmp_path: Path) -> None:
    store = tool_caches.store_of(ToolCaches("/repos/a"), "mypy", ["mypy==1.10.0", "env-1"])
    first = tmp_path / "run-1" / ".mypy_cache"
    assert tool_caches.seed(store, first) is False  # nothing published yet: cold
    assert not first.exists()

    assert tool_caches.publish(_cache(first, "one"), store) is True
    second = tmp_path / "run-2" / ".mypy_cache"
    assert tool_caches.seed(store, second) is True
    assert (second / "3.11" / "cache.0.db").read_text() == "one"


def test_publishing_replaces_the_whole_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    tool_caches.publish(_cache(tmp_path / "a", "old"), store)
    (tmp_path / "a" / "3.11" / "stale.db").write_text("x")
    tool_caches.publish(_cache(tmp_path / "b", "new"), store)
    assert sorted(p.name for p in (store / "3.11").iterdir()) == ["cache.0.db"]
    assert (store / "3.11" / "cache.0.db").read_text() == "new"
    # No staged or retired copy is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("store")) == [
        "store",
        "store.lock",
    ]


def test_a_cache_the_commit_brought_is_left_as_it_is(tmp_path: Path) -> None:
    store = tmp_path / "store"
    tool_caches.publish(_cache(tmp_path / "published", "ours"), store)
    committed = _cache(tmp_path / "ws" / ".mypy_cache", "theirs")
    assert tool_caches.seed(store, committed) is False
    assert (committed / "3.11" / "cache.0.db").read_text() == "theirs"


def test_nothing_to_publish_leaves_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    tool_caches.publish(_cache(tmp_path / "a", "kept"), store)
    assert tool_caches.publish(tmp_path / "never-written", store) is False
    assert (store / "3.11" / "cache.0.db").read_text() == "kept"


def test_stores_are_apart_per_repository_and_key() -> None:
    a = tool_caches.store_of(ToolCaches("/repos/a"), "mypy", ["mypy==1", "env"])
    assert a != tool_caches.store_of(ToolCaches("/repos/b"), "mypy", ["mypy==1", "env"])
    assert a != tool_caches.store_of(ToolCaches("/repos/a"), "mypy", ["mypy==2", "env"])
    assert a != tool_caches.store_of(ToolCaches("/repos/a"), "mypy", ["mypy==1", "env-2"])
    # Trust decides who writes, not what is read.
    assert a == tool_caches.store_of(
        ToolCaches("/repos/a", publish=False), "mypy", ["mypy==1", "env"]
    )


def test_only_tools_with_a_cache_get_its_variable(tmp_path: Path) -> None:
    assert tool_caches.cache_environ("mypy", tmp_path) == {
        "MYPY_CACHE_DIR": str(tmp_path / ".mypy_cache")
    }
    assert tool_caches.cache_environ("ruff", tmp_path) == {}


def _step(name: str, seconds: float, returncode: int = 0) -> StepResult:
    time.sleep(seconds)
    return StepResult(name, name, returncode, seconds)


def test_side_by_side_results_come_in_the_order_given() -> None:
    steps = run_side_by_side([lambda: _step("slow", 0.3), lambda: _step("fast", 0.0, returncode=1)])
    assert [(s.name, s.returncode) for s in steps] == [("slow", 0), ("fast", 1)]


def test_side_by_side_steps_overlap() -> None:
    inside = threading.Barrier(2, timeout=10)

    def waits_for_the_other(name: str) -> StepResult:
        inside.wait()  # breaks (and raises) unless both run at once
        return StepResult(name, name, 0, 0.0)

    steps = run_side_by_side([lambda: waits_for_the_other("a"), lambda: waits_for_the_other("b")])
    assert [s.name for s in steps] == ["a", "b"]


def test_side_by_side_steps_are_the_jobs_and_all_end_before_a_failure_is_raised() -> None:
    seen: list[progress.ProgressEvent] = []
    ended: list[str] = []

    def started(name: str) -> StepResult:
        progress.step_started(name, name)
        return StepResult(name, name, 0, 0.0)

    def broken() -> StepResult:
        raise RuntimeError("the run is being torn down")

    def slow() -> StepResult:
        time.sleep(0.3)
        ended.append("slow")
        return StepResult("slow", "slow", 0, 0.3)

    with progress.listening(seen.append), progress.job_running("quality"):
        assert [s.name for s in run_side_by_side([lambda: started("ruff")])] == ["ruff"]
        run_side_by_side([lambda: started("mypy"), lambda: started("black")])
        with pytest.raises(RuntimeError, match="torn down"):
            run_side_by_side([broken, slow])
    assert ended == ["slow"]
    steps = {e.step: e.job for e in seen if isinstance(e, progress.StepStarted)}
    assert steps == {"ruff": "quality", "mypy": "quality", "black": "quality"}


def test_black_gets_half_the_cores_unless_the_project_chose_its_workers() -> None:
    from tasks.quality import _shared_cores

    assert _shared_cores("black", []) == {
        "BLACK_NUM_WORKERS": str(max(1, (os.cpu_count() or 1) // 2))
    }
    for chosen in (["--workers", "4"], ["--workers=4"], ["-W", "4"], ["-W4"]):
        assert _shared_cores("black", chosen) == {}, chosen
    assert _shared_cores("mypy", []) == {}
