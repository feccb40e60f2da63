"""The LLM side of a run: the gateway the test jobs talk to, then what it cost.

A flow opens one gateway for the run (``llm_session``), hands its variables
to the jobs that need an LLM, and afterwards ``LlmSession.account`` records every call
in the cost store, publishes the usage, and turns an over-budget run into a
failed ``llm-budget`` job with the spend shown.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from cicd.config import CONFIG_FILE, LlmMode, PipelineConfig
from cicd.errors import ConfigError
from cicd.results import JobResult, JobState
from tasks.job import JobContext, JobInputs
from tasks.llm import CallRecord, Gateway, gateway_from_config, load_api_key
from tasks.llm.budget import BudgetExceeded, check_budget, format_usd
from tasks.llm.costs import CostStore

if TYPE_CHECKING:
    from cicd.git import Checkout
    from cicd.runs import PipelineRun

BUDGET_JOB = "llm-budget"
UPSTREAM_MODES = ("live", "record")


@dataclass
class LlmSession:
    """The run's gateway and what is needed to account for it afterwards."""

    gateway: Gateway
    env: dict[str, str]
    run_id: str
    flow: str
    repo: str
    ref: str
    budget_usd: float | None
    recordings: Path
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def account(self, passed: bool, store: CostStore | None = None) -> tuple[JobResult, str]:
        """Record the calls; the ``llm-budget`` job and the usage section of the summary."""
        budget, section = account(
            self.gateway, run_id=self.run_id, flow=self.flow, repo=self.repo, ref=self.ref,
            started_at=self.started_at, passed=passed, budget_usd=self.budget_usd, store=store,
        )  # fmt: skip
        saved = str(self.recordings) if self.recordings.is_dir() else None
        return replace(budget, details={**budget.details, "recordings": saved}), section


@contextmanager
def llm_session(
    config: PipelineConfig,
    mode: LlmMode,
    run: PipelineRun,
    checkout: Checkout,
    ref: str,
    budget_usd: float | None,
) -> Iterator[LlmSession]:
    """A started gateway for the checked-out target; stopped on exit.

    In record mode the exchanges are written into the workspace, which is
    deleted with the run; they are copied to the run directory so they can be
    committed to the target for later replays.
    """
    api_key = None
    if mode in UPSTREAM_MODES:
        if not config.llm.api_key_secret:
            raise ConfigError(
                CONFIG_FILE,
                [
                    f"field 'llm.api_key_secret': LLM mode {mode!r} needs the name of the "
                    "Prefect Secret block holding the upstream API key"
                ],
            )
        # load_api_key also registers it with cicd.masking: Prefect ships log
        # records as they are, a Secret block hides its value only in its repr.
        api_key = load_api_key(config.llm.api_key_secret)
    gateway = gateway_from_config(
        config.llm,
        mode,
        checkout.path,
        api_key=api_key,
        budget_usd=budget_usd,
        budget_label=run.flow,
    )
    saved = run.directory / "llm-recordings"
    gateway.start()
    try:
        env = gateway.env(config.llm.export)
        yield LlmSession(gateway, env, run.run_id, run.flow, checkout.repo, ref, budget_usd, saved)
    finally:
        gateway.stop()
        recordings = checkout.path / config.llm.recordings
        if mode == "record" and recordings.is_dir():
            shutil.copytree(recordings, saved, dirs_exist_ok=True)


def usage_markdown(calls: Sequence[CallRecord], mode: str, budget_usd: float | None) -> str:
    spent = sum(call.spent_usd for call in calls)
    would = sum(call.cost_usd or 0.0 for call in calls if call.would_cost)
    prompt = sum(call.prompt_tokens for call in calls)
    completion = sum(call.completion_tokens for call in calls)
    budget = "none" if budget_usd is None else format_usd(budget_usd)
    lines = [
        "## LLM usage",
        "",
        f"Mode **{mode}**: {len(calls)} call(s), {prompt} prompt + {completion} completion tokens, "
        f"spent **{format_usd(spent)}** (budget {budget})"
        + (f", would have cost {format_usd(would)} against the real API" if would else ""),
    ]
    if calls:
        lines += [
            "",
            "| Model | Status | Prompt | Completion | Latency ms | Cost |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for call in calls:
            cost = "" if call.cost_usd is None else format_usd(call.cost_usd)
            if call.would_cost and cost:
                cost += " (would)"
            lines.append(
                f"| {call.model} | {call.status} | {call.prompt_tokens} | {call.completion_tokens} "
                f"| {call.latency_ms:.1f} | {cost} |"
            )
    return "\n".join(lines)


def account(
    gateway: Gateway,
    *,
    run_id: str,
    flow: str,
    repo: str,
    ref: str,
    started_at: datetime,
    passed: bool,
    budget_usd: float | None,
    store: CostStore | None = None,
) -> tuple[JobResult, str]:
    """Record the run's calls; return the budget job and the usage section."""
    gateway.wait_idle()
    calls = gateway.calls
    store = store or CostStore()
    try:
        store.record_run(
            run_id,
            flow=flow,
            repo=repo,
            ref=ref,
            started_at=started_at,
            status="passed" if passed else "failed",
            budget_usd=budget_usd,
            llm_mode=gateway.mode,
        )
        row = store.record_calls(run_id, calls)
    finally:
        store.close()
    section = usage_markdown(calls, gateway.mode, budget_usd)
    details = {
        "run_id": run_id,
        "calls": row.calls,
        "spent_usd": round(row.total_usd, 6),
        "would_cost_usd": round(row.would_cost_usd, 6),
        "prompt_tokens": sum(c.prompt_tokens for c in calls),
        "completion_tokens": sum(c.completion_tokens for c in calls),
        "mode": gateway.mode,
    }
    try:
        check_budget(row.total_usd, budget_usd, flow)
    except BudgetExceeded as exc:
        return (
            JobResult(BUDGET_JOB, JobState.FAILED, 0.0, reason=str(exc), details=details),
            section,
        )
    return JobResult(BUDGET_JOB, JobState.PASSED, 0.0, details=details), section


@dataclass(frozen=True)
class LlmBudgetJob:
    """The ``llm-budget`` job: record the run's LLM calls, fail when over budget.

    Runs after the test jobs (it accounts for their calls); never cached.
    """

    session: LlmSession
    tests_passed: bool
    name: str = BUDGET_JOB

    kind: ClassVar[str] = "llm-budget"
    version: ClassVar[str] = "1"
    timeout: ClassVar[float] = 120.0

    def inputs(self) -> JobInputs:
        return JobInputs(None)

    def run(self, context: JobContext) -> JobResult:
        budget, usage = self.session.account(self.tests_passed)
        return replace(budget, section=usage)
