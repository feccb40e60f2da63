"""Strategies as plans of steps (seed 004: immediate, rolling, blue-green,
canary and manual, each a plan of steps with timeouts and retries).

A plan is data: a list of :class:`Step` that ``tasks/deploy/deployer.py``
executes one by one and records as it goes; ``manual`` is the plan alone,
shown and recorded but not executed. Pure functions, so a plan can be read
(and tested) without running anything.

- immediate: start every new replica, wait until all are healthy, switch all
  traffic at once, stop the old set.
- rolling: one replica at a time (a surge of one): start it, wait until healthy,
  route to it instead of one old replica, stop that one, next.
- blue-green: start the whole new set, switch when it is healthy; the old set
  keeps running as the standby for an instant rollback.
- canary: start the new set, then shift traffic step by step (10 % -> 50 % ->
  100 %), analysing canary vs stable at every step below 100 %.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cicd.config_deploy import DeployEnvironment

Action = Literal["pre-hooks", "start", "health", "route", "analyse", "retire", "post-hooks"]


@dataclass(frozen=True)
class Step:
    name: str
    action: Action
    timeout: float
    retries: int
    # start/health: the new replicas' indexes; route: the canary share and how
    # many replicas of each set serve; retire: whether the old set stays as standby.
    replicas: tuple[int, ...] = ()
    percent: int = 100
    new_serving: int = 0
    old_serving: int = 0
    keep_standby: bool = False
    analyse_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    strategy: str
    steps: list[Step] = field(default_factory=list)
    executes: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "executes": self.executes,
            "steps": [s.to_json() for s in self.steps],
        }


def plan_for(settings: DeployEnvironment, old_replicas: int) -> Plan:
    """The plan of ``settings.strategy`` for a set of ``settings.replicas``,
    replacing ``old_replicas`` running ones (0 at the first deploy)."""
    strategy = settings.strategy
    n = settings.replicas
    timeout, retries = strategy.step_timeout, strategy.retries
    health_timeout = min(settings.health.timeout, timeout)
    every = tuple(range(n))
    plan = Plan(strategy.kind)
    steps = plan.steps
    if settings.hooks.pre:
        steps.append(Step("pre-deploy hooks", "pre-hooks", settings.hooks.timeout, 0))

    def start_all() -> None:
        steps.append(Step(f"start {n} replica(s)", "start", timeout, retries, every))
        steps.append(Step(f"wait until {n} healthy", "health", health_timeout, 0, every))

    if strategy.kind == "rolling" and old_replicas > 0:
        for i in range(n):
            steps.append(Step(f"start replica {i + 1}/{n}", "start", timeout, retries, (i,)))
            steps.append(Step(f"replica {i + 1} healthy", "health", health_timeout, 0, (i,)))
            steps.append(
                Step(
                    f"route to {i + 1} new + {max(0, old_replicas - i - 1)} old",
                    "route",
                    timeout,
                    retries,
                    percent=100 if i + 1 >= old_replicas else 0,
                    new_serving=i + 1,
                    old_serving=max(0, old_replicas - i - 1),
                )
            )
        steps.append(Step("stop the old set", "retire", timeout, retries))
    elif strategy.kind == "canary" and old_replicas > 0:
        start_all()
        for percent in strategy.steps:
            steps.append(
                Step(
                    f"route {percent}% to the canary",
                    "route",
                    timeout,
                    retries,
                    percent=percent,
                    new_serving=n,
                    old_serving=old_replicas,
                )
            )
            if percent < 100:
                rules = settings.analysis
                seconds = rules.count * rules.interval if rules.count else strategy.step_seconds
                steps.append(
                    Step(
                        f"analyse at {percent}%",
                        "analyse",
                        seconds + timeout,
                        0,
                        percent=percent,
                        analyse_seconds=seconds,
                    )
                )
        steps.append(Step("stop the stable set", "retire", timeout, retries))
    else:
        # immediate, blue-green, manual, and any first deploy (nothing to shift from)
        start_all()
        steps.append(
            Step("switch all traffic", "route", timeout, retries, new_serving=n, old_serving=0)
        )
        keep = strategy.kind == "blue-green" and old_replicas > 0
        steps.append(
            Step(
                "keep the old set as standby" if keep else "stop the old set",
                "retire",
                timeout,
                retries,
                keep_standby=keep,
            )
        )
    if settings.hooks.post:
        steps.append(Step("post-deploy hooks", "post-hooks", settings.hooks.timeout, 0))
    if strategy.kind == "manual":
        plan.executes = False
    return plan
