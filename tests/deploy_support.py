"""What the deploy tests share: releases of the sample built once, a bounded
loopback load generator that goes through the proxy, environment settings."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cicd.config_deploy import Analysis, DeployEnvironment, HealthCheck, Strategy, StrategyKind
from cicd.git import commit_timestamp
from cicd.sample import git
from tasks import packaging

BRANCHES = ("main", "release-good", "release-errors", "release-unhealthy")


@dataclass(frozen=True)
class Built:
    wheel: Path
    commit: str
    ref: str


def build_releases(repo: Path, out: Path) -> dict[str, Built]:
    """One wheel per scenario branch, built from a clean clone of it."""
    built: dict[str, Built] = {}
    for branch in BRANCHES:
        work = out / f"src-{branch}"
        git(repo, "worktree", "add", "--quiet", "--detach", str(work), branch)
        commit = git(work, "rev-parse", "HEAD").strip()
        files = packaging.build_distributions(
            work, out / branch, source_date_epoch=commit_timestamp(work, commit)
        )
        wheel = next(p for p in files if p.name.endswith(".whl"))
        built[branch] = Built(wheel, commit, branch)
        git(repo, "worktree", "remove", "--force", str(work))
    return built


def settings(
    kind: StrategyKind = "canary",
    *,
    replicas: int = 2,
    steps: tuple[int, ...] = (10, 50, 100),
    step_seconds: float = 2.0,
    health_timeout: float = 8.0,
    **extra: object,
) -> DeployEnvironment:
    return DeployEnvironment(
        replicas=replicas,
        start=["agentkit-serve", "--port", "{port}"],
        health=HealthCheck(interval=0.1, count=5, timeout=health_timeout),
        strategy=Strategy(
            kind=kind, steps=list(steps), step_seconds=step_seconds, drain_seconds=0.2
        ),
        analysis=Analysis(interval=0.25, max_error_rate=0.01),
        **extra,  # type: ignore[arg-type]
    )


@dataclass
class LoadGenerator:
    """Requests through the proxy from a thread at a bounded rate, one connection
    each, until stopped (or ``max_seconds``); every answer is recorded."""

    url: str
    rate: float = 80.0
    max_seconds: float = 120.0
    results: list[tuple[float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> LoadGenerator:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        end = time.monotonic() + self.max_seconds
        pause = 1.0 / self.rate
        while not self._stop.is_set() and time.monotonic() < end:
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    answer.read()
                    self.results.append((started, answer.status, answer.headers["X-Release"]))
            except urllib.error.HTTPError as exc:
                self.results.append((started, exc.code, exc.headers.get("X-Release", "")))
            except OSError as exc:
                self.results.append((started, 0, type(exc).__name__))
            time.sleep(max(0.0, pause - (time.monotonic() - started)))

    @property
    def failed(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]

    def releases(self, since: float = 0.0) -> Counter[str]:
        return Counter(r[2] for r in self.results if r[0] >= since)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["X-Release"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Release", "")
