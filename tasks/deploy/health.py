"""Is a replica healthy: ``count`` consecutive passing probes (seed 002: five
consecutive healthy checks), one every ``interval``, within ``timeout``.

A probe is an HTTP GET of the configured path on the replica's own port
(answer 2xx), or a command (exit 0) with ``{port}`` filled in. A replica whose
process exits is unhealthy at once: there is nothing left to wait for.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from cicd import command
from cicd.config_deploy import HealthCheck

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Health:
    healthy: bool
    checks: int
    seconds: float
    detail: str


def http_ok(port: int, path: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            return 200 <= answer.status < 300, f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"


def probe(check: HealthCheck, port: int) -> tuple[bool, str]:
    if check.command is not None:
        argv = [arg.replace("{port}", str(port)) for arg in check.command]
        result = command.run(argv, timeout=max(PROBE_TIMEOUT, check.interval))
        return result.ok, f"exit {result.returncode}"
    return http_ok(port, check.path or "/healthz")


def watch(check: HealthCheck, port: int, count: int, interval: float) -> Health:
    """``count`` probes ``interval`` apart, all of which must pass (no streak resets)."""
    started = time.monotonic()
    for number in range(1, count + 1):
        ok, detail = probe(check, port)
        if not ok:
            return Health(False, number, time.monotonic() - started, f"check {number}: {detail}")
        if number < count:
            time.sleep(interval)
    return Health(True, count, time.monotonic() - started, "every check passed")


def wait_healthy(
    check: HealthCheck, port: int, running: Callable[[], bool], timeout: float | None = None
) -> Health:
    """Probe until ``check.count`` pass in a row, the process exits or time runs out."""
    started = time.monotonic()
    deadline = started + (timeout if timeout is not None else check.timeout)
    streak = checks = 0
    detail = "not probed"
    while True:
        if not running():
            return Health(False, checks, time.monotonic() - started, "the process exited")
        ok, detail = probe(check, port)
        checks += 1
        streak = streak + 1 if ok else 0
        if streak >= check.count:
            return Health(True, checks, time.monotonic() - started, detail)
        if time.monotonic() + check.interval > deadline:
            return Health(
                False,
                checks,
                time.monotonic() - started,
                f"not healthy within {deadline - started:g}s (last probe: {detail})",
            )
        time.sleep(check.interval)
