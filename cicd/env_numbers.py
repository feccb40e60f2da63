"""Numbers read from ``CICD_*`` (and similar) environment variables, checked once.

Every such setting is read the same way: unset or blank gives the default; a
value that is not a number, or is out of range, is bad input naming the
variable and the value as given (``CICD_WARM_IDLE_SECONDS='-1': expected ...``),
raised before anything is started.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from cicd.errors import BadInput


def _raw(name: str, environ: Mapping[str, str] | None) -> str:
    return (os.environ if environ is None else environ).get(name, "").strip()


def positive_number(
    name: str,
    default: float,
    *,
    maximum: float = 10**7,
    unit: str = "seconds",
    environ: Mapping[str, str] | None = None,
) -> float:
    """A finite number above 0 and at most ``maximum`` from ``name``, else ``default``."""
    raw = _raw(name, environ)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= maximum):
        raise BadInput(
            f"{name}={raw!r}: expected a number of {unit}, above 0 and at most {maximum:g}"
        )
    return value


def whole_number(
    name: str,
    default: int,
    *,
    minimum: int,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
    raw: str | None = None,
) -> int:
    """A whole number in ``minimum..maximum`` from ``name`` (or ``raw``, a value
    given as an option named ``name``), else ``default``."""
    text = _raw(name, environ) if raw is None else raw.strip()
    if not text:
        return default
    bounds = f">= {minimum}" if maximum is None else f"{minimum} to {maximum}"
    try:
        value = int(text)
    except ValueError:
        raise BadInput(f"{name}={text!r}: expected a whole number {bounds}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise BadInput(f"{name}={text!r}: expected a whole number {bounds}")
    return value
