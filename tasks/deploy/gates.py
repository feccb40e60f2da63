"""Who may deploy where (seed 000: production only from main and only after
staging succeeded; seed 002: production only after approval)."""

from __future__ import annotations

from cicd.config_deploy import DeployEnvironment
from tasks.deploy.base import Release
from tasks.deploy.state import passed


def refusal(project: str, name: str, settings: DeployEnvironment, release: Release) -> str | None:
    """Why ``release`` may not go to environment ``name``; None when it may.

    The branch is the ref the pipeline was started on (its name, as GitHub's
    ``on: push: branches`` filters it).
    """
    if settings.branches is not None and release.ref not in settings.branches:
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
