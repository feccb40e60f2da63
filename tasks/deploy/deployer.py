"""Executes a plan (``tasks/deploy/strategies.py``) on one environment, step by
step, recording each (attempts, seconds, outcome, analysis), and rolls back
automatically when a step fails or runs out of time.

Retries are for infrastructure errors only (a port taken between choosing and
binding it, a proxy reload that failed); an unhealthy replica or a failed
analysis is a verdict, never retried. Before every switch the state file says
which routing is about to be applied (``tasks/deploy/state.py``).
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cicd import command
from cicd.config_deploy import DeployEnvironment
from cicd.errors import CicdError, InfrastructureError
from tasks.deploy import analysis as canary_analysis
from tasks.deploy.base import Release, Runtime
from tasks.deploy.health import wait_healthy
from tasks.deploy.proxy import Proxy, weights_for
from tasks.deploy.rollback import restore_live, retire
from tasks.deploy.state import EnvironmentState, ReplicaSet
from tasks.deploy.strategies import Plan, Step
from tasks.services.host import free_ports

# Decides an inconclusive analysis (a person, through the flow's pause): True = go on.
Decide = Callable[[canary_analysis.StepAnalysis], bool]


class StepFailed(CicdError):
    """A step's verdict: the release must not take (more) traffic."""


@dataclass
class DeployResult:
    outcome: str  # success | partial | rolled-back | planned
    reason: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    switch_seconds: list[float] = field(default_factory=list)
    detected_at: float | None = None
    restored_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "steps": self.steps,
            "switch_seconds": self.switch_seconds,
            "restored_seconds": self.restored_seconds,
        }


@dataclass
class Deployer:
    state: EnvironmentState
    settings: DeployEnvironment
    runtime: Runtime
    proxy: Proxy
    release: Release
    installed: Path
    log_dir: Path
    decide: Decide | None = None
    result: DeployResult = field(default_factory=lambda: DeployResult("running", ""))

    @property
    def old(self) -> ReplicaSet | None:
        return self.state.live

    @property
    def new(self) -> ReplicaSet:
        assert self.state.pending is not None
        return self.state.pending

    def execute(self, plan: Plan) -> DeployResult:
        if not plan.executes:
            self.result.outcome, self.result.reason = "planned", "manual strategy: the plan only"
            self.result.steps = [{**s.to_json(), "outcome": "planned"} for s in plan.steps]
            return self.result
        self.state.pending = ReplicaSet(self.release)
        self.state.phase = "starting"
        self.state.save()
        for step in plan.steps:
            try:
                self._run_step(plan, step)
            except StepFailed as failed:
                self.result.detected_at = time.monotonic()
                self._roll_back(f"{step.name}: {failed}")
                return self.result
        self.result.outcome = self.result.outcome if self.result.outcome == "partial" else "success"
        return self.result

    def _run_step(self, plan: Plan, step: Step) -> None:
        started = time.monotonic()
        entry: dict[str, Any] = {"name": step.name, "action": step.action, "attempts": 0}
        self.result.steps.append(entry)
        try:
            for attempt in range(step.retries + 1):
                entry["attempts"] = attempt + 1
                try:
                    entry.update(self._act(plan, step, started + step.timeout) or {})
                    break
                except InfrastructureError as exc:
                    if attempt == step.retries:
                        raise StepFailed(str(exc)) from exc
                    entry.setdefault("retried", []).append(str(exc))
            if time.monotonic() > started + step.timeout:
                raise StepFailed(f"timed out after {step.timeout:g}s")
            entry["outcome"] = "passed"
        except StepFailed as exc:
            entry["outcome"], entry["reason"] = "failed", str(exc)
            raise
        finally:
            entry["seconds"] = round(time.monotonic() - started, 3)

    def _act(self, plan: Plan, step: Step, deadline: float) -> dict[str, Any] | None:
        if step.action in ("pre-hooks", "post-hooks"):
            return self._hooks(step)
        if step.action == "start":
            for index in step.replicas:
                if index < len(self.new.replicas) and self.runtime.running(
                    self.new.replicas[index]
                ):
                    continue
                (port,) = free_ports(1)
                replica = self.runtime.start(
                    self.release, self.installed, port, self.settings, self.log_dir
                )
                self.new.replicas[index : index + 1] = [replica]
                self.state.save()  # every process we started is on record at once
                self._wait_listening(replica.port, index, deadline)
            return None
        if step.action == "health":
            for index in step.replicas:
                replica = self.new.replicas[index]
                health = wait_healthy(
                    self.settings.health,
                    replica.port,
                    functools.partial(self.runtime.running, replica),
                    timeout=max(0.0, deadline - time.monotonic()),
                )
                if not health.healthy:
                    raise StepFailed(f"replica on port {replica.port}: {health.detail}")
            return None
        if step.action == "route":
            return self._route(plan, step)
        if step.action == "analyse":
            return self._analyse(step, deadline)
        if step.action == "retire":
            self._retire(step.keep_standby)
            return None
        raise AssertionError(step.action)

    def _wait_listening(self, port: int, index: int, deadline: float) -> None:
        """Until the replica accepts connections. One that exits first (its port
        taken between choosing and binding it: free ports are only free when
        asked) is an infrastructure error, retried on a new port."""
        replica = self.new.replicas[index]
        while time.monotonic() < deadline:
            if not self.runtime.running(replica):
                log = self.log_dir / f"{self.release.id}-{port}.log"
                tail = log.read_text(errors="replace")[-500:] if log.is_file() else ""
                raise InfrastructureError(f"replica on port {port} exited at start: {tail}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)

    def _servers(self, plan: Plan, step: Step) -> list[tuple[int, int]]:
        old_ports = self.old.ports if self.old else []
        new_ports = self.new.ports[: step.new_serving]
        kept_old = old_ports[len(old_ports) - step.old_serving :] if step.old_serving else []
        if plan.strategy == "canary":
            return weights_for(kept_old, new_ports, step.percent)
        return [(p, 1) for p in kept_old + new_ports]

    def _route(self, plan: Plan, step: Step) -> dict[str, Any]:
        servers = self._servers(plan, step)
        self.state.routing = servers
        self.state.phase = f"switching: {step.name}"
        self.state.save()  # written before the switch: a crash here is recoverable
        seconds = self.proxy.switch(servers)
        self.state.proxy_generation = self.proxy.generation
        self.state.phase = f"routed: {step.name}"
        self.state.save()
        self.result.switch_seconds.append(seconds)
        if plan.strategy == "rolling" and self.old is not None:
            # The old replica that left the routing is stopped at once (surge of one).
            routed = {p for p, _ in servers}
            time.sleep(self.settings.strategy.drain_seconds)
            for replica in list(self.old.replicas):
                if replica.port not in routed:
                    self.runtime.stop(replica)
                    self.old.replicas.remove(replica)
            self.state.save()
        return {"switch_seconds": round(seconds, 4), "servers": servers}

    def _analyse(self, step: Step, deadline: float) -> dict[str, Any]:
        rules = self.settings.analysis
        stable_ports = self.old.ports if self.old else []
        canary_ports = self.new.ports
        seen = canary_analysis.StepAnalysis()
        first_c = canary_analysis.scrape(canary_ports, rules.metrics_path)
        first_s = canary_analysis.scrape(stable_ports, rules.metrics_path)
        if first_c is None or first_s is None:
            raise StepFailed("no data: the metrics endpoint did not answer")
        last_c, last_s = first_c, first_s
        end = min(time.monotonic() + step.analyse_seconds, deadline)
        while time.monotonic() < end:
            time.sleep(min(rules.interval, max(0.0, end - time.monotonic())))
            now_c = canary_analysis.scrape(canary_ports, rules.metrics_path)
            now_s = canary_analysis.scrape(stable_ports, rules.metrics_path)
            if now_c is None or now_s is None:
                raise StepFailed("no data: the metrics endpoint stopped answering")
            for before, after, into in (
                (last_c, now_c, seen.canary_latencies),
                (last_s, now_s, seen.stable_latencies),
            ):
                latency = canary_analysis.interval_latency(before, after)
                if latency is not None:
                    into.append(latency)
            if canary_analysis.interval_failed(last_c, now_c, rules):
                seen.failed_intervals += 1
            last_c, last_s = now_c, now_s
            seen.canary, seen.stable = now_c - first_c, now_s - first_s
            # Errors are judged at every interval: a failing canary is stopped
            # once its failures exceed the limit, not at the end of its step.
            if seen.failed_intervals > rules.failure_limit:
                break
        canary_analysis.judge(seen, rules)
        report = seen.to_json()
        if seen.verdict == "inconclusive":
            if self.decide is None or not self.decide(seen):
                raise StepFailed(f"inconclusive analysis, not approved: {seen.reason}")
            report["decided_by_person"] = True
        elif seen.verdict == "failed":
            raise StepFailed(seen.reason)
        return {"analysis": report}

    def _retire(self, keep_standby: bool) -> None:
        time.sleep(self.settings.strategy.drain_seconds)
        old, standby = self.old, self.state.standby
        if standby is not None:
            retire(self.runtime, standby)
            self.state.standby = None
        if old is not None:
            if keep_standby:
                self.state.standby = old
            else:
                retire(self.runtime, old)
        self.state.previous = old.release if old is not None else self.state.previous
        self.state.live, self.state.pending = self.new, None
        self.state.phase = "idle"
        self.state.save()

    def _hooks(self, step: Step) -> dict[str, Any]:
        hooks = self.settings.hooks.pre if step.action == "pre-hooks" else self.settings.hooks.post
        env = {
            "CICD_RELEASE": self.release.id,
            "CICD_ENVIRONMENT": self.state.environment,
            "CICD_PROXY_URL": self.proxy.url,
        }
        for argv in hooks:
            result = command.run(argv, env={**os.environ, **env}, timeout=step.timeout)
            if not result.ok:
                why = f"hook {' '.join(argv)!r} failed (exit {result.returncode}): {result.tail(5)}"
                if step.action == "post-hooks":
                    # Deployed and serving: a post-deploy hook cannot undo that
                    # (seed 000's "partial").
                    self.result.outcome, self.result.reason = "partial", why
                    return {"reason": why}
                raise StepFailed(why)
        return {}

    def _roll_back(self, reason: str) -> None:
        started = time.monotonic()
        restore_live(self.state, self.runtime, self.proxy, self.settings, self.log_dir)
        self.result.restored_seconds = time.monotonic() - started
        self.result.outcome, self.result.reason = "rolled-back", reason
