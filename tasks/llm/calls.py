"""One LLM call as the gateway saw it: the unit of cost accounting.

Every request to the gateway's chat endpoint produces exactly one
:class:`CallRecord`, answered or not, so a run's spend and its misses can be
reconstructed from the records alone. Records never hold headers, keys or
message text: only what the cost store and the weekly report need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

CallStatus = Literal["ok", "miss", "error", "blocked"]
CallSource = Literal["mock", "recording", "upstream", "none"]

STATUSES: tuple[CallStatus, ...] = ("ok", "miss", "error", "blocked")
SOURCES: tuple[CallSource, ...] = ("mock", "recording", "upstream", "none")


@dataclass(frozen=True)
class CallRecord:
    """One chat completion request handled by the gateway.

    ``cost_usd`` is priced from the pinned table; ``None`` when the model is
    not in it. ``would_cost`` is true when nothing was spent (mock, replay):
    the cost is then what the call would have cost against the real API.
    ``status``: ``ok`` answered; ``miss`` no recording matched (answered by
    the mock in non-strict replay, else refused); ``error`` the request or
    the upstream failed; ``blocked`` refused because the budget was spent.
    """

    timestamp: datetime
    mode: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    cost_usd: float | None
    would_cost: bool
    status: CallStatus
    http_status: int
    error: str | None = None
    stream: bool = False
    source: CallSource = "none"
    tokens_estimated: bool = False
    request_key: str = ""

    @property
    def spent_usd(self) -> float:
        """Real money this call cost (zero for mock and replay answers)."""
        return 0.0 if self.would_cost or self.cost_usd is None else self.cost_usd

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallRecord:
        values = dict(data)
        values["timestamp"] = as_utc(datetime.fromisoformat(str(values["timestamp"])))
        return cls(**values)


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)
