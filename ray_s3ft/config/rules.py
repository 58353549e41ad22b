"""The rule one config field's value must follow, declared with the field in ``schema``
(``checked(default, check)``) and applied by ``checks.validate``: a range, a choice, a non-empty
string, or null. Standard library only, like the schema."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Check:
    """What one field's value must be, declared with the field (``checked``); ``checks.validate``
    applies every field's check, then the rules that span fields."""

    test: Callable[[Any], bool]
    allowed: str  # the error's words: "<key>: <allowed>; got <value>"


def checked(default: Any, check: Check) -> Any:
    """A field with ``default`` whose value must pass ``check``."""
    return field(default=default, metadata={"check": check})


def one_of(values: Sequence) -> Check:
    return Check(lambda v: v in values, "must be one of " + ", ".join(map(str, values)))


def _finite(test: Callable[[float], bool]) -> Callable[[Any], bool]:
    # nan and inf fail every test
    return lambda v: isinstance(v, (int, float)) and math.isfinite(v) and test(v)


AT_LEAST_1 = Check(_finite(lambda v: v >= 1), "must be >= 1")
AT_LEAST_0 = Check(_finite(lambda v: v >= 0), "must be >= 0")
# a Python interpreter needs tens of MiB of address space just to start
AT_LEAST_64_MIB = Check(_finite(lambda v: v >= 64), "must be >= 64 (MiB)")
POSITIVE = Check(_finite(lambda v: v > 0), "must be a finite number > 0")
NON_NEGATIVE = Check(_finite(lambda v: v >= 0), "must be a finite number >= 0")
FRACTION = Check(_finite(lambda v: 0 <= v <= 1), "must be in [0, 1]")
FRACTION_BELOW_1 = Check(_finite(lambda v: 0 <= v < 1), "must be in [0, 1)")
FRACTION_ABOVE_0 = Check(_finite(lambda v: 0 < v <= 1), "must be in (0, 1]")


def or_null(check: Check, null_means: str) -> Check:
    """``check``, or null (which then means ``null_means``)."""
    allowed = check.allowed.removeprefix("must be ")
    return Check(lambda v: v is None or check.test(v), f"must be null ({null_means}) or {allowed}")


NON_EMPTY = Check(lambda v: isinstance(v, str) and bool(v.strip()), "must be a non-empty string")
