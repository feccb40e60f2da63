"""Git poller: the trigger for git hosts that cannot send webhooks.

Every run lists the remote refs of each configured repository with
``git ls-remote``, compares them with the refs seen by the previous run and
starts the matching deployment, exactly as ``cicd webhook`` would:

* a configured branch moved -> ``integration`` with ``{repo, ref: new sha, base: old sha}``
  (a branch that appeared since the last poll has no ``base``);
* a new tag starting with the target's ``tag_prefix`` -> ``release`` with ``{repo, ref: tag}``.

The first poll of a repository only records what is there: starting a release
for every tag that already exists would republish old versions.

The refs seen are kept in ``$CICD_HOME/git-poller/state.json``, not in a
Prefect Variable (those hold at most 5000 characters, less than the tag list
of a long-lived project). A ref is only recorded as seen once its run has been
created, so a failed start is retried by the next poll instead of being lost.

Targets come from the ``targets`` parameter or, when it is not given, from the
Prefect Variable ``cicd-git-poller`` (a JSON list of targets), so the schedule
can be pointed at other repositories without a redeploy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cicd import git, paths
from cicd.errors import BadInput, InfrastructureError
from cicd.locking import file_lock
from deployments.webhook import Ignored, StartFn, Trigger

FLOW_NAME: Final = "git-poller"
TARGETS_VARIABLE: Final = "cicd-git-poller"
LS_REMOTE_TIMEOUT: Final = 120.0


class PollTarget(BaseModel):
    """One repository to watch."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1)
    branches: list[str] = ["main"]
    tag_prefix: str = "v"

    # Checked when the target is read, so a bad address never reaches git (a
    # repo of '--upload-pack=CMD@x:y' would run CMD: see cicd.git).
    @field_validator("repo")
    @classmethod
    def _address(cls, repo: str) -> str:
        try:
            return git.check_repo_address(repo)
        except BadInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("branches")
    @classmethod
    def _branch_names(cls, branches: list[str]) -> list[str]:
        try:
            return [git.check_ref(b, what="branch") for b in branches]
        except BadInput as exc:
            raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class RemoteRefs:
    """Branch and tag heads of one repository, name -> commit sha."""

    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"branches": dict(self.branches), "tags": dict(self.tags)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> RemoteRefs:
        if not isinstance(data, Mapping):
            raise BadInput(f"{where}: expected an object with 'branches' and 'tags'")
        refs: dict[str, dict[str, str]] = {}
        for kind in ("branches", "tags"):
            value = data.get(kind, {})
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise BadInput(f"{where}.{kind}: expected an object of name -> sha strings")
            refs[kind] = dict(value)
        return cls(branches=refs["branches"], tags=refs["tags"])


@dataclass(frozen=True)
class RefChange:
    """One ref that changed since the last poll and what it asks for."""

    kind: Literal["branch", "tag"]
    name: str
    event: Trigger | Ignored


@dataclass(frozen=True)
class PollOutcome:
    """What one poll of one target did."""

    repo: str
    started: list[tuple[Trigger, str]] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    failed: list[tuple[Trigger, str]] = field(default_factory=list)
    baseline: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "baseline": self.baseline,
            "started": [
                {
                    "deployment": t.deployment,
                    "parameters": t.parameters,
                    "description": t.description,
                    "flow_run_id": run_id,
                }
                for t, run_id in self.started
            ],
            "ignored": [i.reason for i in self.ignored],
            "failed": [
                {"deployment": t.deployment, "parameters": t.parameters, "error": error}
                for t, error in self.failed
            ],
        }


# --- pure parts ------------------------------------------------------------------


def parse_ls_remote(output: str) -> RemoteRefs:
    """The branches and tags in ``git ls-remote`` output.

    An annotated tag is listed twice: ``refs/tags/v1`` (the tag object) and
    ``refs/tags/v1^{}`` (the commit it points to); the commit wins, so a
    release runs on the same sha a webhook would report. Refs whose names are
    not valid ref names or whose ids are not SHAs are left out: the remote is not
    trusted, and its names become the ``ref`` of the runs we start.
    """
    branches: dict[str, str] = {}
    tags: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in output.splitlines():
        parts = line.strip().split("\t")
        if len(parts) != 2:
            continue
        sha, ref = parts
        if not _valid_listing(sha, ref):
            continue
        if ref.startswith("refs/heads/"):
            branches[ref.removeprefix("refs/heads/")] = sha
        elif ref.startswith("refs/tags/"):
            name = ref.removeprefix("refs/tags/")
            if name.endswith("^{}"):
                peeled[name.removesuffix("^{}")] = sha
            else:
                tags[name] = sha
    tags.update({name: sha for name, sha in peeled.items() if name in tags})
    return RemoteRefs(branches=branches, tags=tags)


def _valid_listing(sha: str, ref: str) -> bool:
    try:
        git.check_commit_sha(sha)
        # The short name (a tag's is the ``ref`` of its release run) may not start with '-'.
        git.check_ref(ref.removesuffix("^{}").removeprefix("refs/heads/").removeprefix("refs/tags/"))
    except BadInput:
        return False
    return True


def diff_refs(
    repo: str, old: RemoteRefs | None, new: RemoteRefs, target: PollTarget
) -> list[RefChange]:
    """The runs that the change from ``old`` to ``new`` asks for, in a stable order.

    ``old`` None is the first poll: it starts nothing.
    """
    if old is None:
        return []
    changes: list[RefChange] = []
    for branch in target.branches:
        after = new.branches.get(branch)
        before = old.branches.get(branch)
        if after is None or after == before:
            continue
        parameters = {"repo": repo, "ref": after}
        if before is not None:
            parameters["base"] = before
        what = "pushed" if before is not None else "created"
        trigger = Trigger("integration", parameters, f"branch {branch} {what} at {after[:12]}")
        changes.append(RefChange("branch", branch, trigger))
    for tag in sorted(new.tags):
        sha = new.tags[tag]
        if not tag.startswith(target.tag_prefix):
            continue
        previous = old.tags.get(tag)
        if previous is None:
            trigger = Trigger("release", {"repo": repo, "ref": tag}, f"tag {tag} created")
            changes.append(RefChange("tag", tag, trigger))
        elif previous != sha:
            # A moved release tag would publish a second build of the same version.
            reason = f"tag {tag} moved from {previous[:12]} to {sha[:12]}; not released again"
            changes.append(RefChange("tag", tag, Ignored(reason)))
    return changes


def state_after(old: RemoteRefs | None, new: RemoteRefs, failed: Sequence[RefChange]) -> RemoteRefs:
    """What to remember: ``new``, except refs whose run could not be started, which
    keep their old value so that the next poll tries again."""
    if old is None:
        return new
    branches = dict(new.branches)
    tags = dict(new.tags)
    for change in failed:
        current, before = (branches, old.branches) if change.kind == "branch" else (tags, old.tags)
        if change.name in before:
            current[change.name] = before[change.name]
        else:
            current.pop(change.name, None)
    return RemoteRefs(branches=branches, tags=tags)


def parse_targets(raw: Any, where: str) -> list[PollTarget]:
    if not isinstance(raw, list):
        raise BadInput(f"{where}: expected a list of targets, got {type(raw).__name__}")
    targets: list[PollTarget] = []
    for index, item in enumerate(raw):
        try:
            targets.append(PollTarget.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'target'}: {e['msg']}"
                for e in exc.errors()
            )
            raise BadInput(f"{where}[{index}]: {problems}") from None
    return targets


# --- state -------------------------------------------------------------------------


def state_path() -> Path:
    return paths.home() / "git-poller" / "state.json"


def load_state(path: Path) -> dict[str, RemoteRefs]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected an object of repo -> refs")
    return {repo: RemoteRefs.from_json(refs, f"{path}: {repo}") for repo, refs in raw.items()}


def save_state(path: Path, state: Mapping[str, RemoteRefs]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    data = {repo: refs.to_json() for repo, refs in sorted(state.items())}
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    # Atomic: a poll killed mid-write must not leave a file the next one cannot read.
    tmp.replace(path)


# --- git and starting runs -------------------------------------------------------------


def ls_remote(repo: str) -> RemoteRefs:
    """The branches and tags of ``repo`` (its address checked, passed after ``--``)."""
    return parse_ls_remote(git.ls_remote(repo, timeout=LS_REMOTE_TIMEOUT))


def poll_target(
    target: PollTarget,
    state: dict[str, RemoteRefs],
    start: StartFn,
    list_refs: Callable[[str], RemoteRefs] = ls_remote,
) -> PollOutcome:
    """Poll one repository, start its runs and update ``state`` in place."""
    old = state.get(target.repo)
    new = list_refs(target.repo)
    outcome = PollOutcome(target.repo, baseline=old is None)
    failed: list[RefChange] = []
    for change in diff_refs(target.repo, old, new, target):
        event = change.event
        if isinstance(event, Ignored):
            outcome.ignored.append(event)
            continue
        try:
            outcome.started.append((event, start(event.deployment, dict(event.parameters))))
        except Exception as exc:  # kept unseen: the next poll retries it
            outcome.failed.append((event, f"{type(exc).__name__}: {exc}"))
            failed.append(change)
    state[target.repo] = state_after(old, new, failed)
    return outcome


def poll(
    targets: Sequence[PollTarget],
    path: Path,
    start: StartFn,
    list_refs: Callable[[str], RemoteRefs] = ls_remote,
) -> list[PollOutcome]:
    """Poll every target under the state file's lock; the state is saved after
    each target, so one unreachable repository does not hold back the others."""
    outcomes: list[PollOutcome] = []
    errors: list[str] = []
    with file_lock(path.with_suffix(".lock")):
        state = load_state(path)
        for target in targets:
            try:
                outcomes.append(poll_target(target, state, start, list_refs))
            except InfrastructureError as exc:
                errors.append(str(exc))
                continue
            save_state(path, state)
    if errors:
        # Raised after the others were polled: the run shows as failed in the UI.
        raise InfrastructureError("; ".join(errors))
    return outcomes


def start_deployment(name_template: str) -> StartFn:
    """A ``start`` that creates a flow run of ``name_template.format(flow=...)`` and
    returns its id without waiting for it."""

    def start(deployment: str, parameters: dict[str, Any]) -> str:
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment

        flow_run = run_deployment(
            name=name_template.format(flow=deployment),
            parameters=parameters,
            timeout=0,
            tags=["git-poller"],
            # Independent runs: cancelling a poll must not touch the pipelines it started.
            as_subflow=False,
        )
        assert isinstance(flow_run, FlowRun)
        return str(flow_run.id)

    return start


def configured_targets() -> list[PollTarget]:
    """Targets from the Prefect Variable ``cicd-git-poller`` (empty when unset)."""
    from prefect.variables import Variable

    raw = Variable.get(TARGETS_VARIABLE, default=None)
    if raw is None:
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadInput(f"variable {TARGETS_VARIABLE}: not valid JSON ({exc.msg})") from None
    return parse_targets(raw, f"variable {TARGETS_VARIABLE}")


@flow(name=FLOW_NAME, log_prints=True)
def git_poller(
    targets: list[PollTarget] | None = None,
    deployment_template: str = "{flow}/{flow}",
) -> list[dict[str, Any]]:
    logger = get_run_logger()
    if "/" not in deployment_template or "{flow}" not in deployment_template:
        raise BadInput(
            f"deployment_template {deployment_template!r} must look like '{{flow}}/<deployment>'"
        )
    chosen = list(targets) if targets is not None else configured_targets()
    if not chosen:
        logger.info("nothing to poll: pass targets or set the variable %s", TARGETS_VARIABLE)
        return []
    outcomes = poll(chosen, state_path(), start_deployment(deployment_template))
    for outcome in outcomes:
        if outcome.baseline:
            logger.info("%s: first poll, refs recorded, nothing started", outcome.repo)
        for trigger, run_id in outcome.started:
            logger.info(
                "%s: %s -> %s run %s", outcome.repo, trigger.description, trigger.deployment, run_id
            )
        for ignored in outcome.ignored:
            logger.info("%s: %s", outcome.repo, ignored.reason)
        for trigger, error in outcome.failed:
            logger.error(
                "%s: could not start %s for %s: %s",
                outcome.repo,
                trigger.deployment,
                trigger.description,
                error,
            )
    failures = [f for o in outcomes for f in o.failed]
    if failures:
        raise InfrastructureError(f"{len(failures)} run(s) could not be started; retried next poll")
    return [o.to_json() for o in outcomes]
