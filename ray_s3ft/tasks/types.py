"""The example record every task produces."""

from __future__ import annotations

from dataclasses import dataclass, field

# How an example's answer is checked (the judge and evaluation route on this)


@dataclass(frozen=True)
class Example:
    id: str  # stable within a split, e.g. "train-00012"
    skill: str  # "arith" for the built-in task, a held-out skill name, or the data set name
    prompt: str  # the user message (the chat template is applied by the engine)
    gold: str  # the gold response, in the data set's own style
    answer: str  # the final answer the verifier compares against
    verifier: str = "math"  # one of VERIFIERS
    tests: tuple[str, ...] = field(default=())  # code tasks: assert statements
    choices: tuple[str, ...] = field(default=())  # choice tasks: the options, in letter order


class DataError(ValueError):
    """A data file that cannot be used; the message names the file (and row, where there is one)."""
