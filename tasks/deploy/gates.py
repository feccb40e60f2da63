"""Who may deploy where (seed 000: production only from main and only after
staging succeeded; seed 002: production only after approval)."""

from __future__ import annotations

from cicd.config_deploy import DeployEnvironment
from tasks.deploy.base import Release
from tasks.deploy.state import passed


def refusal(
    project: str,
    name: str,
    settings: DeployEnvironment,
    release: Release,
    branch_tips: dict[str, str | None] | None = None,
) -> str | None:
    """Why ``release`` may not go to environment ``name``; None when it may.

    The branch is the ref the pipeline was started on (its name, as GitHub's
    ``on: push: branches`` filters it), or an allowed branch whose tip is the
    release's commit (``--ref HEAD`` or a SHA); ``branch_tips`` maps the
    allowed branches to their commits in the repository.
    """
    tips = branch_tips or {}
    on_allowed_tip = any(tips.get(b) == release.commit for b in settings.branches or [])
    if (
        settings.branches is not None
        and release.ref not in settings.branches
        and not (on_allowed_tip)
    ):
        return (
            f"environment {name!r} deploys only from {', '.join(settings.branches)}; "
            f"got ref {release.ref!r}"
        )
    if settings.requires is not None and not passed(project, settings.requires, release.sha256):
        return (
            f"environment {name!r} requires {settings.requires!r}: artifact "
            f"{release.id} (sha256 {release.sha256[:12]}) has not been deployed there successfully"
        )
    return None
