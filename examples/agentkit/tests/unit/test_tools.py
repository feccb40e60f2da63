import pytest

from agentkit.tools import Calculator


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("2+2", 4.0), ("3 * (4 - 1)", 9.0), ("2 ** 10", 1024.0), ("-5 + 1", -4.0), ("7 / 2", 3.5)],
)
def test_calculator(expression: str, expected: float) -> None:
    assert Calculator().run(expression) == expected


def test_calculator_refuses_names() -> None:
    with pytest.raises(ValueError):
        Calculator().run("__import__('os')")
