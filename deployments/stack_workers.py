"""How many flow runs one worker of the stack runs at once.

A process worker without ``--limit`` submits every scheduled run it sees:
whichever worker polls first takes them all (issue 16 saw 3 of 4 runs on one
worker). With ``prefect worker start --limit N`` the worker holds one slot of
an in-process ``anyio.CapacityLimiter`` per run, from before it proposes
Pending until the run's process exits
(``prefect.workers.base.BaseWorker._submit_scheduled_flow_runs``, Prefect
3.9.1); a worker at its limit stops submitting and leaves the rest Scheduled,
so the next worker's poll takes them
(https://docs.prefect.io/v3/api-ref/cli/worker). A slot never given back left
runs Late in Prefect 3.2 (https://github.com/PrefectHQ/prefect/issues/17628);
3.9.1 gives it back on every exit path of ``_submit_run``.

``cicd up --runs-per-worker N`` (else ``CICD_RUNS_PER_WORKER``, else
:data:`DEFAULT_RUNS_PER_WORKER`) sets it for every worker it starts; the
compose file passes the same variable to its workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from cicd.env_numbers import whole_number

RUNS_PER_WORKER_ENV: Final = "CICD_RUNS_PER_WORKER"
# A PR run already runs its jobs in parallel (quality | unit | framework): two
# runs at once keep a 2-core worker busy; more only make each one slower.
DEFAULT_RUNS_PER_WORKER: Final = 2
# A bound, so a typo (20000) is refused rather than meaning "unlimited".
MAX_RUNS_PER_WORKER: Final = 256


def runs_per_worker(option: int | None, environ: Mapping[str, str] | None = None) -> int:
    """The ``--limit`` of each worker: the option, else the variable, else the default."""
    if option is not None:
        return whole_number(
            "--runs-per-worker",
            DEFAULT_RUNS_PER_WORKER,
            minimum=1,
            maximum=MAX_RUNS_PER_WORKER,
            raw=str(option),
        )
    return whole_number(
        RUNS_PER_WORKER_ENV,
        DEFAULT_RUNS_PER_WORKER,
        minimum=1,
        maximum=MAX_RUNS_PER_WORKER,
        environ=environ,
    )


def limit_argv(limit: int) -> list[str]:
    """The options of ``prefect worker start`` that cap its concurrent flow runs."""
    return ["--limit", str(limit)]
