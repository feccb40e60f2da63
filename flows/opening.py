"""What every pipeline does first, in one place: the run directory, the
checkout (registered for cleanup at once), cicd.yaml, the environment, and
the run's statuses on the git host (pending now, final in ``Opened.finish``).

    - uses: actions/checkout@v4
    - run: pip install -e ".[dev]"
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cicd import masking
from cicd.changes import only_ignored
from cicd.config import PipelineConfig, SuiteConfig, load_config
from cicd.git import Checkout, changed_files, remove_workspace
from cicd.results import PipelineReport
from cicd.runs import PipelineRun, pipeline_run
from flows.gate import FlowOutcome, finish
from flows.run_names import naming_current_run
from tasks import deferred
from tasks.checkout import checkout_task
from tasks.commit_statuses import CommitStatuses, commit_statuses
from tasks.environments import (
    Environment,
    environment_task,
    planned_environment,
    tool_packages,
)


@dataclass(frozen=True)
class Opened:
    """A pipeline run with its commit checked out and its configuration read."""

    run: PipelineRun
    checkout: Checkout
    config: PipelineConfig
    # Posting nothing unless cicd.yaml has `statuses:` (tasks/commit_statuses.py).
    statuses: CommitStatuses = field(default_factory=lambda: CommitStatuses(None))

    def environment(self, suites: Iterable[SuiteConfig] = ()) -> Environment:
        """The target's environment with what the jobs need (reused while unchanged)."""
        packages = tool_packages(self.config, suites)
        return environment_task(
            self.checkout.path, self.config.environment, packages, self.run.log("environment")
        )

    def planned_environment(self, suites: Iterable[SuiteConfig] = ()) -> Environment:
        """The same environment by its key alone, neither checked nor built: for
        jobs that are all served from the cache (``tasks.environments``)."""
        packages = tool_packages(self.config, suites)
        return planned_environment(
            self.checkout.path, self.config.environment, packages, self.run.log("environment")
        )

    def skip_reason(self, base: str | None) -> str | None:
        """Why every job can be skipped: the change since ``base`` touches only
        ignored paths (``on: pull_request: paths-ignore``)."""
        if not base:
            return None
        changed = changed_files(self.checkout.mirror, base, self.checkout.commit)
        if not only_ignored(changed, self.config.ignore_paths):
            return None
        shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        return f"skipped: only paths no job depends on changed ({shown}; ignore_paths)"

    def finish(self, report: PipelineReport) -> FlowOutcome:
        """The gate (the verdict, told to watchers at once), then each job's and
        the run's final status on the git host, which never changes it."""
        outcome = finish(report)
        self.statuses.final(report)
        return outcome


def _remove_later(workspace: Path) -> None:
    deferred.defer(f"removal of {workspace}", partial(remove_workspace, workspace))


@contextmanager
def open_pipeline(flow: str, repo: str, ref: str, *, untrusted: bool = False) -> Iterator[Opened]:
    """Set up a run of ``flow`` on ``repo@ref``; on any exit its processes are
    killed and its workspace deleted (``cicd.runs.pipeline_run``), and a status
    still pending on the git host is set to error. ``untrusted`` (a fork): no
    statuses, since the fork's cicd.yaml would choose where the token goes."""
    # Prefect ships log records as they are (its Secret block hides a value only
    # in its repr): every secret registered in cicd.masking is masked from here on.
    masking.register_credentials(os.environ)
    masking.install_filter()
    with pipeline_run(flow) as run:
        # A normal end: the verdict is known, the workspace goes while the flow
        # ends (tasks/deferred.py; an error or a cancel removes it at once).
        run.remove_later = _remove_later
        checkout = checkout_task(repo, ref)
        run.workspaces.append(checkout.path)
        # "pr-validation · owner/repo@branch · 1a2b3c4": the commit is known only
        # now; named while the run goes on, done by its end.
        with naming_current_run(flow, checkout):
            config = load_config(checkout.path)
            with commit_statuses(flow, checkout, config.statuses, untrusted=untrusted) as statuses:
                yield Opened(run, checkout, config, statuses)
