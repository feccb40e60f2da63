"""The LLM gateway and its cost accounting (seed 003: mock LLM on PRs, cached
LLM on main, real LLM nightly, cost tracked per run).

    gateway.py     OpenAI-compatible HTTP server, one CallRecord per call
    modes.py       mock / replay / record / live answers, upstream forwarding
    recordings.py  recorded exchanges, one JSON file per request hash
    prices.py      the pinned price table (prices.json)
    calls.py       CallRecord
    budget.py      check_budget / BudgetExceeded
    costs.py       the cost store (SQLAlchemy; SQLite by default)
    keys.py        load_api_key from a Prefect Secret block
    redaction.py   log filter masking secrets
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
