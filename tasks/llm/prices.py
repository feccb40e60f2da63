"""The pinned LLM price table: $ per 1M input and output tokens per model.

The table ships with cicd-flows (``prices.json`` beside this module) and is
never fetched at run time: a CI run must cost the same on the day it ran and
when the weekly report is rebuilt later, and there is no network here anyway.
The file carries a "source" and an "as_of" note; update it in a reviewed change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from cicd.errors import ConfigError

DEFAULT_PRICES = Path(__file__).with_name("prices.json")
TOKENS_PER_UNIT = 1_000_000

# Providers answer with dated snapshots ("gpt-4o-mini-2024-07-18",
# "gpt-3.5-turbo-0125") of the model that was asked for; an exact entry in the
# table wins, otherwise the snapshot is priced as its base model.
_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


@dataclass(frozen=True)
class ModelPrice:
    input_per_m: Decimal
    output_per_m: Decimal
    provider: str = ""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        # Decimal so that sums of many tiny call costs do not drift from the
        # figures a person recomputes by hand from the table.
        total = self.input_per_m * prompt_tokens + self.output_per_m * completion_tokens
        return float(total / TOKENS_PER_UNIT)


@dataclass(frozen=True)
class PriceTable:
    models: Mapping[str, ModelPrice]
    source: str = ""
    as_of: str = ""
    path: str = field(default="", compare=False)

    def lookup(self, model: str | None) -> ModelPrice | None:
        """The price of ``model``, or of its base model for a dated snapshot."""
        if not model:
            return None
        if model in self.models:
            return self.models[model]
        base = _SNAPSHOT_SUFFIX.sub("", model)
        return self.models.get(base)

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Dollars for one call; ``None`` when the model is not in the table."""
        price = self.lookup(model)
        if price is None:
            return None
        return price.cost(prompt_tokens, completion_tokens)


def _price(value: Any, where: str, problems: list[str]) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        problems.append(f"{where}: expected a non-negative number of dollars, got {value!r}")
        return Decimal(0)
    # str() first: Decimal(0.15) would carry the binary float's error.
    return Decimal(str(value))


def parse_prices(data: Any, source: str) -> PriceTable:
    """Validate the JSON structure of a price table; errors name the field."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a JSON object, got {type(data).__name__}"])
    problems: list[str] = []
    models_data = data.get("models")
    if not isinstance(models_data, dict) or not models_data:
        raise ConfigError(source, ["field 'models': expected a non-empty object of model prices"])
    models: dict[str, ModelPrice] = {}
    for name, entry in models_data.items():
        if not isinstance(entry, dict):
            problems.append(f"models.{name}: expected an object with 'input' and 'output'")
            continue
        for key in ("input", "output"):
            if key not in entry:
                problems.append(f"models.{name}.{key}: missing")
        models[name] = ModelPrice(
            input_per_m=_price(entry.get("input", 0), f"models.{name}.input", problems),
            output_per_m=_price(entry.get("output", 0), f"models.{name}.output", problems),
            provider=str(entry.get("provider", "")),
        )
    if problems:
        raise ConfigError(source, problems)
    return PriceTable(
        models=models,
        source=str(data.get("source", "")),
        as_of=str(data.get("as_of", "")),
        path=source,
    )


def load_prices(path: Path | None = None) -> PriceTable:
    """The pinned table shipped with cicd-flows, or another file in its format."""
    path = path or DEFAULT_PRICES
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the price table ({exc.strerror})"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), [f"line {exc.lineno}: not valid JSON ({exc.msg})"]) from None
    return parse_prices(data, str(path))
