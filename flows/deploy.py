"""Deploy: staging -> production, as the seeds describe it.

    build (or fetch) the artifact once -> staging: deploy by its strategy,
      health, analysis, automatic rollback -> production gate (allowed branch,
      the artifact passed staging, approval in the Prefect UI when configured)
      -> monitor through the proxy (a failure rolls back: the transaction's hook)
      -> production: the same artifact, by its strategy, monitored -> notify
      (success / partial success / failed, seed 000)

Every environment's deploy is one task whose result records its plan, each
step and the rollback's reason; the history of what is live where is in
``$CICD_HOME/deploy`` (``tasks/deploy/state.py``).
"""

from __future__ import annotations

from typing import Any, Final

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.transactions import Transaction, transaction

from cicd.config_deploy import DeployEnvironment
from cicd.errors import BadInput
from cicd.git import resolve_commit
from cicd.results import JobResult, JobState
from flows.gate import FlowOutcome, finish
from flows.opening import open_pipeline
from tasks import notify
from tasks.deploy import artifacts, gates
from tasks.deploy.analysis import StepAnalysis
from tasks.deploy.approval import Approval, ask_approval, ask_verdict
from tasks.deploy.base import Release
from tasks.deploy.environment import (
    MonitorFailed,
    deploy_release,
    monitor_environment,
    rollback_environment,
)
from tasks.deploy.state import record

FLOW_NAME: Final = "deploy"


@task(name="artifact")
def artifact_task(
    workspace: str, commit: str, ref: str, given: str | None, index_url: str | None, log: str
) -> Release:
    """The commit's wheel built once; or a given wheel file; or ``name==version``
    fetched from the index (``release.index_url``, else pip's)."""
    from pathlib import Path

    if given is None:
        return artifacts.build_release(Path(workspace), commit, ref, Path(log))
    if given.endswith(".whl"):
        return artifacts.keep(Path(given), commit, ref)
    return artifacts.fetch_release(given, index_url, commit, ref)


@task(name="deploy-environment")
def deploy_task(
    project: str, name: str, settings: DeployEnvironment, release: Release, extra: dict[str, Any]
) -> dict[str, Any]:
    return deploy_release(project, name, settings, release, extra=extra).to_json()


@deploy_task.on_rollback
def _undo_deploy(txn: Transaction) -> None:
    """Prefect's transaction rollback hook: what the environment's transaction
    did not keep (monitoring failed after the switch) goes back to the previous
    release (https://docs.prefect.io/v3/develop/transactions)."""
    target = txn.get("deploy")
    rollback_environment(target["project"], target["environment"], target["reason"])


@task(name="monitor")
def monitor_task(project: str, name: str, settings: DeployEnvironment) -> dict[str, Any]:
    health = monitor_environment(project, name, settings)
    return {"checks": health.checks, "seconds": round(health.seconds, 3)}


def overall(results: list[JobResult]) -> str:
    """Seed 000's outcome: every environment deployed, some, or none."""
    passed = [r for r in results if r.state is JobState.PASSED]
    if (
        results
        and len(passed) == len(results)
        and all(r.details.get("outcome") == "success" for r in passed)
    ):
        return "success"
    return "partial" if passed else "failed"


def _deploy_and_monitor(
    release: Release, name: str, settings: DeployEnvironment, extra: dict[str, Any]
) -> dict[str, Any]:
    """Deploy, then monitor through the proxy, in one transaction: a failed
    monitor rolls the transaction back, and with it the deploy (its hook)."""
    pauses = settings.analysis.pause_when_inconclusive
    outcome: dict[str, Any] = {}
    try:
        with transaction() as txn:
            txn.set(
                "deploy",
                {
                    "project": release.name,
                    "environment": name,
                    "reason": "monitoring after the switch failed",
                },
            )
            if pauses:
                # A pause cannot happen inside a task run: this deploy runs in the
                # flow itself, so that an inconclusive step can wait for a person.
                outcome = _deploy_with_pauses(release, name, settings, extra)
            else:
                outcome = deploy_task(release.name, name, settings, release, extra)
            if outcome["outcome"] in ("success", "partial"):
                outcome["monitor"] = monitor_task(release.name, name, settings)
    except MonitorFailed as failed:
        if pauses:  # not a task: no hook to run
            rollback_environment(release.name, name, "monitoring after the switch failed")
        outcome = {**outcome, "outcome": "rolled-back", "reason": str(failed)}
    return outcome


def _deploy_with_pauses(
    release: Release, name: str, settings: DeployEnvironment, extra: dict[str, Any]
) -> dict[str, Any]:
    def decide(step: StepAnalysis) -> bool:
        answer = ask_verdict(name, release, step.reason, settings.analysis.pause_timeout)
        extra.setdefault("canary_decisions", []).append(
            {"approver": answer.approver, "proceed": answer.proceed, "comment": answer.comment}
        )
        return answer.proceed

    return deploy_release(release.name, name, settings, release, decide, extra).to_json()


def _refusal(
    release: Release, environment: str, reason: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The history entry of a deploy that a gate or a person refused."""
    return {
        "action": "deploy",
        "project": release.name,
        "environment": environment,
        "release": release.to_json(),
        "outcome": "refused",
        "reason": reason,
        **(extra or {}),
    }


@flow(name=FLOW_NAME, log_prints=True)
def deploy(repo: str, ref: str, env: str | None = None, artifact: str | None = None) -> FlowOutcome:
    logger = get_run_logger()
    with open_pipeline(FLOW_NAME, repo, ref) as opened:
        run, checkout, config = opened.run, opened.checkout, opened.config
        if config.deploy is None:
            raise BadInput("cicd.yaml: no 'deploy' section: nothing to deploy")
        environments = config.deploy.environments
        if env is not None and env not in environments:
            raise BadInput(
                f"--env {env!r}: not in cicd.yaml deploy.environments {sorted(environments)}"
            )
        targets = [env] if env is not None else config.deploy.order()

        # build once: the same file goes to every environment
        release = artifact_task(
            str(checkout.path),
            checkout.commit,
            ref,
            artifact,
            config.release.index_url,
            str(run.log("build")),
        )
        results: list[JobResult] = []
        for name in targets:
            settings = environments[name]
            job = f"deploy-{name}"
            tips = {b: resolve_commit(checkout.mirror, b) for b in settings.branches or []}
            refused = gates.refusal(release.name, name, settings, release, tips)
            if refused is not None:
                record(_refusal(release, name, refused))
                results.append(JobResult(job, JobState.FAILED, 0.0, reason=f"refused: {refused}"))
                break
            extra: dict[str, Any] = {}
            if settings.approval:
                answer: Approval = ask_approval(name, release, settings.approval_timeout)
                extra = {"approver": answer.approver, "comment": answer.comment}
                if not answer.approved:
                    record(_refusal(release, name, f"not approved by {answer.approver}", extra))
                    results.append(
                        JobResult(
                            job, JobState.FAILED, 0.0, reason=f"not approved by {answer.approver}"
                        )
                    )
                    break
            outcome = _deploy_and_monitor(release, name, settings, extra)
            ok = outcome["outcome"] in ("success", "partial", "planned")
            results.append(
                JobResult(
                    job,
                    JobState.PASSED if ok else JobState.FAILED,
                    sum(float(s.get("seconds", 0)) for s in outcome["steps"]),
                    reason=outcome["reason"],
                    details={**outcome, **extra},
                )
            )
            logger.info("%s: %s %s", name, outcome["outcome"], outcome["reason"])
            if not ok:
                break

        verdict = overall(results)
        lines = [
            f"- {r.name}: {r.details.get('outcome', r.state.value)} {r.reason}" for r in results
        ]
        body = f"{release.id} ({ref}): {verdict}\n" + "\n".join(lines)
        notify.notify(config.notify, f"deploy {release.name}: {verdict}", body, logger)
        create_markdown_artifact(key="deploy", markdown=f"# Deploy: {verdict}\n\n{body}\n")
        extra_report = {"deploy": {"outcome": verdict, "release": release.to_json()}}
        return finish(run.report(checkout, ref, results, extra=extra_report))
