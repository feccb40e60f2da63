"""The webhook receiver's durable memory: which deliveries and triggers started which run.

A small SQLite database (stdlib ``sqlite3``) at ``$CICD_HOME/webhook/deliveries.db``.
Not the LLM cost store (``tasks/llm/costs.py``): that one may live on a shared
Postgres for reports, while this one belongs to one receiver and must answer in
a millisecond on every delivery.

Two tables:

* ``deliveries``: one row per delivery id (``X-GitHub-Delivery``), the primary
  key. The row is written and committed *before* the run is created (``claim``),
  so a replay of the same id, even after a crash or a restart, starts nothing:
  it is answered with the run the first attempt recorded (``finish``). A row
  without a run is an attempt that was interrupted between claim and record;
  it is never started again, since the run may exist (a double release would
  try to publish one version twice). A start that *failed* is forgotten
  (``forget``), so the git host's redelivery can start it.
* ``triggers``: the last run per trigger key (deployment + parameters), for the
  tag push that GitHub sends twice (``push`` and ``create``) under two ids.

WAL with ``synchronous=NORMAL``: a committed row survives the process being
killed, which is the fault this guards against (https://www.sqlite.org/wal.html).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cicd import paths

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS deliveries (
        delivery_id TEXT PRIMARY KEY,
        trigger_key TEXT NOT NULL,
        flow_run_id TEXT,
        received_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS triggers (
        trigger_key TEXT PRIMARY KEY,
        flow_run_id TEXT NOT NULL,
        started_at REAL NOT NULL
    )""",
)


KEEP_DAYS = 30.0


def default_path() -> Path:
    return paths.home() / "webhook" / "deliveries.db"


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a delivery id: new, or the earlier attempt's run (None
    when that attempt was interrupted before it recorded one)."""

    new: bool
    flow_run_id: str | None = None


class DeliveryStore:
    """Thread-safe (one connection behind a lock; every statement is short)."""

    def __init__(self, path: Path | None, *, keep_days: float = KEEP_DAYS) -> None:
        """``path`` None: an in-memory store, for tests and throwaway receivers."""
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            ":memory:" if path is None else path, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Another receiver on the same home may hold the write lock for a moment.
        self._db.execute("PRAGMA busy_timeout=5000")
        for statement in _SCHEMA:
            self._db.execute(statement)
        # Git hosts redeliver for days at most; older ids only take space.
        cutoff = time.time() - keep_days * 86400
        self._db.execute("DELETE FROM deliveries WHERE received_at < ?", (cutoff,))
        self._db.execute("DELETE FROM triggers WHERE started_at < ?", (cutoff,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def claim(self, delivery_id: str, trigger_key: str) -> Claim:
        """Record ``delivery_id`` (committed on return) unless it is known already."""
        with self._lock:
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO deliveries (delivery_id, trigger_key, received_at) "
                "VALUES (?, ?, ?)",
                (delivery_id, trigger_key, time.time()),
            ).rowcount
            if inserted:
                return Claim(True)
            row = self._db.execute(
                "SELECT flow_run_id FROM deliveries WHERE delivery_id = ?", (delivery_id,)
            ).fetchone()
        return Claim(False, row[0] if row else None)

    def finish(self, delivery_id: str | None, flow_run_id: str, trigger_key: str | None) -> None:
        """The run a claimed delivery was answered with; with ``trigger_key``, the run
        that trigger started now (a duplicate trigger passes None: its window stays)."""
        with self._lock:
            self._db.execute("BEGIN")
            if delivery_id is not None:
                self._db.execute(
                    "UPDATE deliveries SET flow_run_id = ? WHERE delivery_id = ?",
                    (flow_run_id, delivery_id),
                )
            if trigger_key is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO triggers (trigger_key, flow_run_id, started_at) "
                    "VALUES (?, ?, ?)",
                    (trigger_key, flow_run_id, time.time()),
                )
            self._db.execute("COMMIT")

    def forget(self, delivery_id: str) -> None:
        """Drop the claim of a delivery whose start failed: a redelivery may start it."""
        with self._lock:
            self._db.execute(
                "DELETE FROM deliveries WHERE delivery_id = ? AND flow_run_id IS NULL",
                (delivery_id,),
            )

    def recent_run(self, trigger_key: str, window: float) -> str | None:
        """The run this trigger started within the last ``window`` seconds, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT flow_run_id FROM triggers WHERE trigger_key = ? AND started_at > ?",
                (trigger_key, time.time() - window),
            ).fetchone()
        return str(row[0]) if row else None

    def count_runs(self) -> int:
        """Deliveries that started a run (for tests and the load benchmark)."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM deliveries WHERE flow_run_id IS NOT NULL"
            ).fetchone()
        return int(row[0])


def trigger_key(deployment: str, parameters: dict[str, str]) -> str:
    return json.dumps([deployment, sorted(parameters.items())], separators=(",", ":"))
