"""A run in the CLI's process sends no flow-run heartbeats unless asked to:
their thread is joined at the flow's end (up to a second after the last job),
and only a worker's run can be crashed and rescheduled by them."""

from __future__ import annotations

import pytest
from prefect.settings import get_current_settings

from cicd.cli.commands import run


def test_a_cli_run_turns_heartbeats_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    before = get_current_settings().flows.heartbeat_frequency
    with run._local_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == before


def test_heartbeats_the_user_asked_for_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    before = get_current_settings().flows.heartbeat_frequency
    with run._local_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency == before
