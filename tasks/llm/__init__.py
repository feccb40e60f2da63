"""The LLM gateway and its cost accounting (seed 003: mock LLM on PRs, cached
LLM on main, real LLM nightly, cost tracked per run).

    gateway.py       the Gateway: lifecycle, one CallRecord per call, pricing
    http_server.py   loopback HTTP server, routes, JSON/SSE response sink
    answering.py     request validation, dispatch to the mode, call outcome
    modes.py         the four modes (mock / replay / record / live)
    openai_api.py    OpenAI chat-completions shapes: request, usage, chunks
    mock.py          fixtures and mock answers
    upstream.py      forwarding to the real API (record and live)
    recordings.py    recorded exchanges, one JSON file per request hash
    prices.py        the pinned price table (prices.json)
    calls.py         CallRecord
    budget.py        check_budget / BudgetExceeded
    costs.py         the cost store (SQLAlchemy; SQLite by default)
    weekly_spend.py  the weekly spend figures the cost report shows
    keys.py          load_api_key from a Prefect Secret block
    redaction.py     log filter masking secrets
"""

from tasks.llm.budget import BudgetExceeded, check_budget
from tasks.llm.calls import CallRecord
from tasks.llm.gateway import Gateway, gateway_from_config, running_gateway
from tasks.llm.keys import load_api_key
from tasks.llm.modes import MODES, Mode
from tasks.llm.prices import PriceTable, load_prices
from tasks.llm.redaction import SecretRedactor, install_redactor, redact

__all__ = [
    "MODES",
    "BudgetExceeded",
    "CallRecord",
    "Gateway",
    "Mode",
    "PriceTable",
    "SecretRedactor",
    "check_budget",
    "gateway_from_config",
    "install_redactor",
    "load_api_key",
    "load_prices",
    "redact",
    "running_gateway",
]
