"""The cost store on a real SQLite file, and the budget check."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cicd.errors import BadInput, CicdError, ConfigError
from tasks.llm import running_gateway
from tasks.llm.budget import BudgetExceeded, check_budget
from tasks.llm.calls import CallRecord
from tasks.llm.costs import CostStore, default_url
from tasks.llm.fake_upstream import FakeUpstream
from tests.postgres_fixture import PostgresServer, postgres_fixture  # noqa: F401 - fixture

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def call(
    minutes: int,
    cost: float | None,
    *,
    would_cost: bool = False,
    model: str = "gpt-4o-mini",
    status: str = "ok",
) -> CallRecord:
    return CallRecord(
        timestamp=T0 + timedelta(minutes=minutes),
        mode="mock" if would_cost else "live",
        model=model,
        prompt_tokens=100 + minutes,
        completion_tokens=20,
        latency_ms=12.5,
        cost_usd=cost,
        would_cost=would_cost,
        status=status,  # type: ignore[arg-type]
        http_status=200,
        source="mock" if would_cost else "upstream",
        tokens_estimated=would_cost,
        request_key=f"key{minutes}",
    )


@pytest.fixture
def store(tmp_path: Path) -> CostStore:
    return CostStore(f"sqlite:///{tmp_path / 'costs.db'}")


def test_round_trip_of_runs_and_calls(store: CostStore, tmp_path: Path) -> None:
    store.record_run(
        "run-1",
        flow="nightly",
        repo="file:///repos/agentkit",
        ref="main",
        started_at=T0,
        budget_usd=2.0,
        llm_mode="live",
    )
    calls = [
        call(1, 0.25),
        call(2, 0.125, status="error"),
        call(3, 0.5, would_cost=True),
        call(4, None, model="unknown-model"),
    ]
    row = store.record_calls("run-1", calls)
    assert (row.total_usd, row.would_cost_usd, row.calls) == (0.375, 0.5, 4)
    assert store.run_total("run-1") == 0.375

    # A fresh store on the same file sees the same rows, calls intact.
    again = CostStore(f"sqlite:///{tmp_path / 'costs.db'}")
    assert again.calls_for("run-1") == calls
    assert again.calls_for("run-1")[0].timestamp.tzinfo is not None

    # Finishing the run updates its status and keeps the totals.
    finished = again.record_run(
        "run-1",
        flow="nightly",
        repo="file:///repos/agentkit",
        ref="main",
        started_at=T0,
        status="completed",
        budget_usd=2.0,
        llm_mode="live",
    )
    assert (finished.status, finished.total_usd, finished.budget_usd) == ("completed", 0.375, 2.0)

    # More calls later add to the totals.
    assert again.record_calls("run-1", [call(5, 0.125)]).total_usd == 0.5


def test_windows_are_half_open_and_joined_with_the_flow(store: CostStore) -> None:
    store.record_run("a", flow="integration", repo="r", ref="main", started_at=T0)
    store.record_run("b", flow="nightly", repo="r", ref="main", started_at=T0 + timedelta(hours=1))
    store.record_calls("a", [call(0, 0.1), call(30, 0.2)])
    store.record_calls("b", [call(60, 0.3), call(90, 0.4)])

    window = store.calls_between(T0, T0 + timedelta(minutes=60))
    assert [(s.run_id, s.flow, s.call.cost_usd) for s in window] == [
        ("a", "integration", 0.1),
        ("a", "integration", 0.2),
    ]
    # Aware datetimes in any zone mean the same instant.
    plus_one = timezone(timedelta(hours=1))
    later = store.calls_between(
        (T0 + timedelta(minutes=60)).astimezone(plus_one), T0 + timedelta(days=1)
    )
    assert [s.call.cost_usd for s in later] == [0.3, 0.4]

    assert [r.run_id for r in store.runs_between(T0, T0 + timedelta(hours=1))] == ["a"]
    assert [r.run_id for r in store.runs_between(T0, T0 + timedelta(hours=2))] == ["a", "b"]


def test_unknown_runs_and_bad_urls_are_bad_input(store: CostStore) -> None:
    with pytest.raises(BadInput, match="unknown run 'nope'; record_run"):
        store.record_calls("nope", [call(1, 0.1)])
    with pytest.raises(BadInput, match="unknown run 'nope'"):
        store.run_total("nope")
    with pytest.raises(ConfigError) as info:
        CostStore("postgresql+nodriver://user:hunter2secret@db/costs")
    assert "hunter2secret" not in str(info.value)
    assert "user:***@db" in str(info.value)


def test_default_url_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CICD_COST_DB_URL", raising=False)
    monkeypatch.setenv("CICD_HOME", str(tmp_path / "home"))
    assert default_url() == f"sqlite:///{tmp_path / 'home' / 'costs.db'}"
    CostStore().record_run("r", flow="f", repo="x", ref="y", started_at=T0)
    assert (tmp_path / "home" / "costs.db").is_file()
    monkeypatch.setenv("CICD_COST_DB_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert CostStore().url == f"sqlite:///{tmp_path / 'other.db'}"


def test_check_budget() -> None:
    check_budget(0.10, 0.10, "integration")  # exactly the budget is fine
    check_budget(5.0, None)  # no budget, no limit
    check_budget(0.1 + 0.2, 0.3)  # float noise is not an overrun
    with pytest.raises(BudgetExceeded) as info:
        check_budget(0.1234, 0.10, "integration")
    assert str(info.value) == "LLM spend $0.1234 exceeds the budget of $0.10 for integration"
    assert isinstance(info.value, CicdError)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value)
    with pytest.raises(BudgetExceeded, match=r"LLM spend \$2.5000 exceeds the budget of \$2.00$"):
        check_budget(2.5, 2.0)


def test_store_checks_a_run_against_its_budget(store: CostStore) -> None:
    store.record_run("n1", flow="nightly", repo="r", ref="main", started_at=T0, budget_usd=0.5)
    store.record_calls("n1", [call(1, 0.25), call(2, 0.25)])
    assert store.check_run_budget("n1").total_usd == 0.5
    store.record_calls("n1", [call(3, 0.0625), call(4, 9.0, would_cost=True)])
    with pytest.raises(BudgetExceeded, match=r"\$0.5625 exceeds the budget of \$0.50 for nightly"):
        store.check_run_budget("n1")


def test_gateway_calls_land_in_the_store_with_the_same_totals(store: CostStore) -> None:
    with (
        FakeUpstream() as upstream,
        running_gateway(
            "live", upstream_url=upstream.url, api_key="sk-real-key-for-the-store-test"
        ) as gateway,
    ):
        import httpx

        for question in ("first question", "second question here"):
            response = httpx.post(
                gateway.base_url + "/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": question}],
                    "stream": question.startswith("second"),
                },
                headers={"Authorization": f"Bearer {gateway.client_key}"},
            )
            assert response.status_code == 200
        calls = gateway.calls
        spent = gateway.spent_usd
    store.record_run("g1", flow="nightly", repo="r", ref="main", started_at=T0, llm_mode="live")
    row = store.record_calls("g1", calls)
    assert row.calls == 2
    assert row.total_usd == pytest.approx(spent, rel=1e-12)
    assert spent > 0
    assert store.calls_for("g1") == calls


# ------------------------------------------------------------ PostgreSQL


def test_postgres_urls_open_with_psycopg_3_and_async_drivers_are_refused() -> None:
    from tasks.llm.costs import engine_url

    assert engine_url("postgresql://u:p@db/costs") == "postgresql+psycopg://u:p@db/costs"
    assert engine_url("postgres://u:p@db/costs") == "postgresql+psycopg://u:p@db/costs"
    assert engine_url("postgresql+psycopg://u:p@db/c") == "postgresql+psycopg://u:p@db/c"
    assert engine_url("sqlite:///x.db") == "sqlite:///x.db"
    # Prefect's own database URL, copied by hand: a clear error, not a crash
    # inside SQLAlchemy at the first query.
    with pytest.raises(ConfigError) as info:
        CostStore("postgresql+asyncpg://prefect:hunter2secret@db/prefect")
    message = str(info.value)
    assert "asynchronous driver" in message and "use postgresql://" in message
    assert "hunter2secret" not in message


@pytest.mark.postgres
def test_the_cost_store_on_a_real_postgresql(postgres: PostgresServer) -> None:
    url = postgres.create_database("costs_round_trip")
    assert url.startswith("postgresql://")  # as an operator writes it

    store = CostStore(url)
    store.record_run("run-pg", flow="nightly", repo="r", ref="main", started_at=T0)
    row = store.record_calls("run-pg", [call(1, 0.25), call(2, 0.5, would_cost=True)])
    assert (row.total_usd, row.would_cost_usd, row.calls) == (0.25, 0.5, 2)
    store.close()

    # Another store (another worker) on the same database sees the same rows.
    again = CostStore(url)
    stored = again.calls_for("run-pg")
    assert [c.cost_usd for c in stored] == [0.25, 0.5]
    assert stored[0].timestamp == T0 + timedelta(minutes=1)
    window = again.calls_between(T0, T0 + timedelta(minutes=2))
    assert [(s.run_id, s.flow) for s in window] == [("run-pg", "nightly")]
    assert again.engine.dialect.driver == "psycopg"
    again.close()


@pytest.mark.postgres
def test_an_unreachable_postgresql_is_an_infrastructure_error_without_its_password(
    postgres: PostgresServer,
) -> None:
    from cicd.errors import InfrastructureError

    wrong = postgres.url("costs_round_trip").replace(postgres.password, "wrong-hunter2")
    with pytest.raises(InfrastructureError) as info:
        CostStore(wrong)
    assert "wrong-hunter2" not in str(info.value)
