"""Numeric settings from the environment: the default when unset or blank, bad
input naming the variable and its value otherwise."""

from __future__ import annotations

import pytest

from cicd.env_numbers import positive_number, whole_number
from cicd.errors import BadInput


def test_unset_or_blank_gives_the_default_and_a_value_is_read() -> None:
    assert positive_number("CICD_X", 2.5, environ={}) == 2.5
    assert positive_number("CICD_X", 2.5, environ={"CICD_X": "  "}) == 2.5
    assert positive_number("CICD_X", 2.5, environ={"CICD_X": " 0.25 "}) == 0.25
    assert whole_number("CICD_N", 3, minimum=0, environ={"CICD_N": "0"}) == 0
    assert whole_number("--opt", 3, minimum=1, raw="7") == 7


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "nan", "inf", "11"])
def test_a_bad_number_names_the_variable_and_its_value(raw: str) -> None:
    with pytest.raises(BadInput, match=f"CICD_X='{raw}': expected a number of seconds"):
        positive_number("CICD_X", 1.0, maximum=10, environ={"CICD_X": raw})


@pytest.mark.parametrize("raw", ["1.5", "two", "0", "257"])
def test_a_bad_whole_number_names_where_it_came_from(raw: str) -> None:
    with pytest.raises(BadInput, match=f"--runs='{raw}': expected a whole number 1 to 256"):
        whole_number("--runs", 2, minimum=1, maximum=256, raw=raw)
