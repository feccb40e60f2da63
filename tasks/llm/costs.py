"""The cost store: every pipeline run's LLM calls and totals, in one database.

SQLAlchemy 2.0 Core over SQLite at ``$CICD_HOME/costs.db`` by default, or
any SQLAlchemy URL in ``CICD_COST_DB_URL`` (a shared PostgreSQL when several
workers must feed one weekly report: ``postgresql://user:password@host/db``,
opened with psycopg 3, see ``engine_url``). Two tables:

* ``llm_runs``: one row per pipeline run (flow, repo, ref, started_at,
  status, budget) with its totals, kept in step with its calls;
* ``llm_calls``: one row per :class:`CallRecord`.

Times are stored as naive UTC (SQLite has no time zones) and handed back
as aware UTC datetimes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    create_engine,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from cicd import paths
from cicd.errors import BadInput, ConfigError, InfrastructureError
from tasks.llm.budget import BudgetExceeded, check_budget
from tasks.llm.calls import CallRecord, as_utc

__all__ = [
    "BudgetExceeded",
    "CostStore",
    "RunRow",
    "StoredCall",
    "check_budget",
    "default_url",
    "engine_url",
]

URL_ENV = "CICD_COST_DB_URL"

metadata = MetaData()

runs_table = Table(
    "llm_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("flow", String(64), nullable=False),
    Column("repo", Text, nullable=False),
    Column("ref", String(255), nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("status", String(32), nullable=False),
    Column("llm_mode", String(16)),
    Column("budget_usd", Float),
    # Real spend and what the mock/replay calls would have cost; both are
    # recomputed from llm_calls whenever calls are added.
    Column("total_usd", Float, nullable=False, default=0.0),
    Column("would_cost_usd", Float, nullable=False, default=0.0),
    Column("calls", Integer, nullable=False, default=0),
    Index("ix_llm_runs_started_at", "started_at"),
)

calls_table = Table(
    "llm_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("llm_runs.run_id"), nullable=False),
    Column("timestamp", DateTime, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("model", String(128), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("cost_usd", Float),
    Column("would_cost", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("error", Text),
    Column("stream", Boolean, nullable=False),
    Column("source", String(16), nullable=False),
    Column("tokens_estimated", Boolean, nullable=False),
    Column("request_key", String(64), nullable=False),
    Index("ix_llm_calls_timestamp", "timestamp"),
    Index("ix_llm_calls_run_id", "run_id"),
)

_CALL_FIELDS = tuple(name for name in CallRecord.__dataclass_fields__)


@dataclass(frozen=True)
class RunRow:
    run_id: str
    flow: str
    repo: str
    ref: str
    started_at: datetime
    status: str
    total_usd: float
    would_cost_usd: float
    calls: int
    budget_usd: float | None = None
    llm_mode: str | None = None


@dataclass(frozen=True)
class StoredCall:
    """A stored call with the run (and flow) it belongs to."""

    run_id: str
    flow: str
    call: CallRecord


def default_url() -> str:
    configured = os.environ.get(URL_ENV)
    if configured:
        return configured
    return f"sqlite:///{paths.home() / 'costs.db'}"


# The sync drivers SQLAlchemy would pick for a bare scheme are not ours: for
# ``postgresql://`` it loads psycopg2, which is not a dependency; psycopg 3 is
# (pyproject.toml). So a bare PostgreSQL URL names psycopg 3 explicitly
# (https://docs.sqlalchemy.org/en/20/dialects/postgresql.html#module-sqlalchemy.dialects.postgresql.psycopg).
# ``postgres://`` is the spelling of Heroku-style URLs, which SQLAlchemy rejects.
_SYNC_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# The store is synchronous: an async driver (Prefect's own database URL is
# ``postgresql+asyncpg://``) would fail on first use deep inside SQLAlchemy.
_ASYNC_DRIVERS = ("+asyncpg", "+aiosqlite", "+aiomysql", "+asyncmy", "+psycopg_async")


def engine_url(url: str) -> str:
    """The URL the store's (synchronous) engine opens for a configured ``url``.

    Raises ``ValueError`` naming the fix for an async driver.
    """
    scheme = url.split("://", 1)[0].lower()
    if any(scheme.endswith(driver) for driver in _ASYNC_DRIVERS):
        sync = "postgresql://" if scheme.startswith("postgres") else "a synchronous driver"
        raise ValueError(
            f"{scheme}:// is an asynchronous driver and the cost store is synchronous; "
            f"use {sync} (psycopg 3) for the same database"
        )
    for bare in _SYNC_POSTGRES_SCHEMES:
        if url.lower().startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


def _safe_url(url: str) -> str:
    """The URL without the password a database URL may carry."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _naive_utc(moment: datetime) -> datetime:
    return as_utc(moment).replace(tzinfo=None)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _run_row(row: Any) -> RunRow:
    return RunRow(
        run_id=row.run_id,
        flow=row.flow,
        repo=row.repo,
        ref=row.ref,
        started_at=_aware(row.started_at),
        status=row.status,
        total_usd=float(row.total_usd or 0.0),
        would_cost_usd=float(row.would_cost_usd or 0.0),
        calls=int(row.calls or 0),
        budget_usd=row.budget_usd,
        llm_mode=row.llm_mode,
    )


def _call(row: Any) -> CallRecord:
    values = {name: getattr(row, name) for name in _CALL_FIELDS}
    values["timestamp"] = _aware(values["timestamp"])
    return CallRecord(**values)


class CostStore:
    """Runs and calls in a SQLAlchemy database (created on first use)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        try:
            self.engine: Engine = create_engine(engine_url(self.url))
        except (ArgumentError, ImportError, ValueError) as exc:
            source = URL_ENV if url is None else "cost store URL"
            problem = f"not a usable SQLAlchemy URL {_safe_url(self.url)!r} ({_safe_url(str(exc))})"
            raise ConfigError(source, [problem]) from None
        try:
            metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise InfrastructureError(
                f"cannot open the cost store {self.engine.url.render_as_string()}: "
                f"{_safe_url(str(exc))}"
            ) from None

    def close(self) -> None:
        self.engine.dispose()

    # -- writing -----------------------------------------------------------------

    def record_run(
        self,
        run_id: str,
        *,
        flow: str,
        repo: str,
        ref: str,
        started_at: datetime,
        status: str = "running",
        budget_usd: float | None = None,
        llm_mode: str | None = None,
    ) -> RunRow:
        """Create the run, or update it (status at the end); totals come from its calls."""
        if not run_id:
            raise BadInput("cost store: run_id must not be empty")
        values = {
            "flow": flow,
            "repo": repo,
            "ref": ref,
            "started_at": _naive_utc(started_at),
            "status": status,
            "budget_usd": budget_usd,
            "llm_mode": llm_mode,
        }
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(runs_table.c.run_id).where(runs_table.c.run_id == run_id)
            ).first()
            if exists:
                conn.execute(update(runs_table).where(runs_table.c.run_id == run_id).values(values))
            else:
                conn.execute(insert(runs_table).values(run_id=run_id, **values))
            return self._run(conn, run_id)

    def record_calls(self, run_id: str, calls: Iterable[CallRecord]) -> RunRow:
        """Add calls to a recorded run and refresh its totals."""
        rows = [
            {
                **{name: getattr(call, name) for name in _CALL_FIELDS},
                "timestamp": _naive_utc(call.timestamp),
                "run_id": run_id,
            }
            for call in calls
        ]
        with self.engine.begin() as conn:
            known = select(runs_table.c.run_id).where(runs_table.c.run_id == run_id)
            if conn.execute(known).first() is None:
                raise BadInput(f"cost store: unknown run {run_id!r}; record_run() it first")
            if rows:
                conn.execute(insert(calls_table), rows)
            self._refresh_totals(conn, run_id)
            return self._run(conn, run_id)

    def _refresh_totals(self, conn: Connection, run_id: str) -> None:
        c = calls_table.c
        cost = func.coalesce(c.cost_usd, 0.0)
        # CASE rather than SUM(...) FILTER: portable to every SQL backend.
        spent, would, count = conn.execute(
            select(
                func.coalesce(func.sum(case((c.would_cost, 0.0), else_=cost)), 0.0),
                func.coalesce(func.sum(case((c.would_cost, cost), else_=0.0)), 0.0),
                func.count(),
            ).where(c.run_id == run_id)
        ).one()
        conn.execute(
            update(runs_table)
            .where(runs_table.c.run_id == run_id)
            .values(total_usd=float(spent), would_cost_usd=float(would), calls=int(count))
        )

    # -- reading -----------------------------------------------------------------

    def _run(self, conn: Connection, run_id: str) -> RunRow:
        row = conn.execute(select(runs_table).where(runs_table.c.run_id == run_id)).one()
        return _run_row(row)

    def run(self, run_id: str) -> RunRow:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs_table).where(runs_table.c.run_id == run_id)).first()
        if row is None:
            raise BadInput(f"cost store: unknown run {run_id!r}")
        return _run_row(row)

    def run_total(self, run_id: str) -> float:
        """Real LLM spend of a run in dollars (mock and replay calls count zero)."""
        return self.run(run_id).total_usd

    def calls_for(self, run_id: str) -> list[CallRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(calls_table)
                .where(calls_table.c.run_id == run_id)
                .order_by(calls_table.c.timestamp, calls_table.c.id)
            ).all()
        return [_call(row) for row in rows]

    def calls_between(self, start: datetime, end: datetime) -> list[StoredCall]:
        """Calls with ``start <= timestamp < end``, with their run's flow."""
        c = calls_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(calls_table, runs_table.c.flow)
                .join(runs_table, runs_table.c.run_id == c.run_id)
                .where(c.timestamp >= _naive_utc(start), c.timestamp < _naive_utc(end))
                .order_by(c.timestamp, c.id)
            ).all()
        return [StoredCall(row.run_id, row.flow, _call(row)) for row in rows]

    def runs_between(self, start: datetime, end: datetime) -> list[RunRow]:
        """Runs with ``start <= started_at < end``."""
        r = runs_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(runs_table)
                .where(r.started_at >= _naive_utc(start), r.started_at < _naive_utc(end))
                .order_by(r.started_at, r.run_id)
            ).all()
        return [_run_row(row) for row in rows]

    def check_run_budget(self, run_id: str, label: str | None = None) -> RunRow:
        """Raise :class:`BudgetExceeded` when the run spent more than its budget."""
        run = self.run(run_id)
        check_budget(run.total_usd, run.budget_usd, label or run.flow)
        return run


def record_gateway_run(
    store: CostStore,
    run_id: str,
    calls: Sequence[CallRecord],
    **run: Any,
) -> RunRow:
    """Record a run and its calls in one go (what a flow does at the end of a job)."""
    store.record_run(run_id, **run)
    return store.record_calls(run_id, calls)
