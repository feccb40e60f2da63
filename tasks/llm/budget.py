"""The LLM budget of a run: an overrun is a failure that shows the numbers."""

from __future__ import annotations

from cicd.errors import CicdError


def format_usd(amount: float) -> str:
    """Dollars with four decimals (LLM test calls cost fractions of a cent);
    more for amounts that would otherwise show as $0.0000."""
    if amount == 0 or abs(amount) >= 0.0001:
        return f"${amount:.4f}"
    return "$" + f"{amount:.8f}".rstrip("0")


def format_budget(amount: float) -> str:
    """A budget as people write it: ``$2.00``, or more decimals when it has them."""
    text = f"{amount:.8f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


class BudgetExceeded(CicdError):
    """The run's real LLM spend is over its budget."""

    def __init__(self, spent_usd: float, budget_usd: float, label: str | None = None) -> None:
        self.spent_usd = spent_usd
        self.budget_usd = budget_usd
        self.label = label
        where = f" for {label}" if label else ""
        super().__init__(
            f"LLM spend {format_usd(spent_usd)} exceeds the budget of "
            f"{format_budget(budget_usd)}{where}"
        )

    def __reduce__(self) -> tuple[type[BudgetExceeded], tuple[float, float, str | None]]:
        # Prefect pickles exceptions into results; the default reduce would
        # call __init__ with the formatted message only.
        return (type(self), (self.spent_usd, self.budget_usd, self.label))


def check_budget(total_usd: float, budget_usd: float | None, label: str | None = None) -> None:
    """Raise :class:`BudgetExceeded` when ``total_usd`` is over ``budget_usd``.

    Spending exactly the budget is allowed; no budget means no limit.
    """
    if budget_usd is None:
        return
    # Compare at a tenth of a micro-dollar: float sums of call costs must not
    # turn "exactly the budget" into an overrun.
    if round(total_usd, 7) > round(budget_usd, 7):
        raise BudgetExceeded(total_usd, budget_usd, label)
