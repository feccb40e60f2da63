"""The cores of this machine shared between the jobs of a run: each job its share first.

Why (issue 15): the quality job runs its tools side by side (tasks/quality.py),
and on a 2-core machine its three processes (ruff, mypy, black) took the cores
from the test job beside it, the run's longest: the unit job's pytest took
0.85 s against 0.55 s alone on the sample. With Linux's autogroups every step
is a session of its own (bwrap ``--new-session``), so ``nice`` cannot order
them (sched(7), "The autogroup feature":
https://man7.org/linux/man-pages/man7/sched.7.html).

The rule, as GNU make's jobserver shares ``-j`` between sub-makes
(https://www.gnu.org/software/make/manual/html_node/Job-Slots.html): a step
may start when its job runs no other step, or when the running steps plus the
other jobs that are on but between steps (each keeps one core) are fewer than
the cores. So no job ever waits for another job (its first step always starts,
and a job's own timeout never counts time spent behind others), and a job's
extra steps run side by side only on cores no other job uses; when a step
ends, the next waiting one starts.

``CICD_CORES`` sets the number of cores shared (default: the cores this
process may run on); ``CICD_CORES=0`` turns sharing off (every step starts at
once, as before). Per process: two ``cicd run`` on one machine do not share.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterator

from cicd.errors import BadInput

VARIABLE = "CICD_CORES"


def cores(environ: dict[str, str] | None = None) -> int:
    """The number of cores the steps share; 0 when sharing is off."""
    env = os.environ if environ is None else environ
    raw = env.get(VARIABLE, "").strip()
    if not raw:
        return len(os.sched_getaffinity(0)) or 1
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise BadInput(f"{VARIABLE}={raw!r}: expected a number of cores (0 turns sharing off)")
    return value


class CoreShares:
    """The running steps of this process, by job."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running: Counter[str] = Counter()
        self._jobs: Counter[str] = Counter()

    def running(self) -> int:
        with self._changed:
            return sum(self._running.values())

    def _may_start(self, job: str, limit: int) -> bool:
        if self._running[job] == 0:
            return True
        # A job that is on but between steps (its setup, parsing its reports) keeps
        # its core: it would otherwise wait behind another job's extra steps.
        between = sum(1 for name in self._jobs if name != job and not self._running[name])
        return sum(self._running.values()) + between < limit

    @contextlib.contextmanager
    def job(self, name: str) -> Iterator[None]:
        """``name`` is on: one core is kept for it, whether or not a step of it runs."""
        with self._changed:
            self._jobs[name] += 1
        try:
            yield
        finally:
            self._leave(self._jobs, name)

    @contextlib.contextmanager
    def step(self, job: str, timeout: float | None = None) -> Iterator[bool]:
        """Hold a share of the cores for one step of ``job``; yields False when
        ``timeout`` passed before one was free (the step is then not to run)."""
        limit = cores()
        with self._changed:
            granted = not limit or self._changed.wait_for(
                lambda: self._may_start(job, limit), timeout=timeout
            )
            if granted:
                self._running[job] += 1
        if not granted:
            yield False
            return
        try:
            yield True
        finally:
            self._leave(self._running, job)

    def _leave(self, counts: Counter[str], name: str) -> None:
        """One fewer of ``name`` in ``counts``; the waiting steps look again."""
        with self._changed:
            counts[name] -= 1
            if not counts[name]:
                del counts[name]
            self._changed.notify_all()


SHARES = CoreShares()
