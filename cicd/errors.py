"""The small exception hierarchy every part of cicd-flows raises.

The CLI maps them to exit codes: ``BadInput`` (and its subclasses) is the user's
mistake and exits 2; everything else that escapes a pipeline exits 1.
"""

from __future__ import annotations


class CicdError(Exception):
    """Base class of every error cicd-flows raises on purpose."""


class BadInput(CicdError):
    """The request cannot be carried out as given: unknown repo or ref, bad config."""


class ConfigError(BadInput):
    """A configuration file is invalid; the message names the file and the field."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, list[str]]]:
        # Prefect pickles task and flow exceptions into results; the default
        # reduce would call __init__ with the formatted message only.
        return (type(self), (self.path, self.problems))


class InfrastructureError(CicdError):
    """Something around the pipeline failed (fetch, environment, service start).

    Only these are retried: retrying a failing test would hide a real failure.
    """


def is_infrastructure_error(exc: BaseException | None) -> bool:
    return isinstance(exc, InfrastructureError)


def retry_on_infrastructure(task: object, task_run: object, state: object) -> bool:
    """A Prefect ``retry_condition_fn``: retry only when the failure was infrastructure.

    Prefect calls it with the failed state; re-raising the state's exception is
    the documented way to see what failed.
    """
    try:
        state.result()  # type: ignore[attr-defined]
    except Exception as exc:
        return is_infrastructure_error(exc)
    return False
