"""The built-in task's judge: a solution is correct when every step it writes is right.

A final-answer check accepts a solution whose steps are wrong but whose last number is right,
which is common when the model rewrites a gold reference (it can copy the final answer and
miscopy a step). Trained on, such a target teaches wrong arithmetic. So for the built-in word
problems the judge (``judge.verifier: steps``, what ``auto`` picks for the built-in task) reads
the problem's true running totals from the question and checks the response against them:

- the model's own style, ``12 + 7 = 19. 19 - 5 = 14. The answer is 14.``: one equation per step,
  each with the previous total, the step's operation and operand, and the right result;
- the gold style, ``Mia starts with 12 apples. After buying 7 and losing 5, she has 14. #### 14``:
  the start, then each sentence's events in order and the total after them.

Anything else falls back to the final answer alone (None when there is none). The task metric
(evaluation) is unchanged: it is the final answer, checked by the math verifier.
"""

from __future__ import annotations

import re

from ray_s3ft.tasks.builtin import _GAIN, _LOSS
from ray_s3ft.verifiers.math import verify_math

_SIGN = {**{v: 1 for v, _ in _GAIN}, **{v: -1 for v, _ in _LOSS}}
_GERUND = {**{g: 1 for _, g in _GAIN}, **{g: -1 for _, g in _LOSS}}
_VERBS = "|".join(sorted(map(re.escape, _SIGN), key=len, reverse=True))
_GERUNDS = "|".join(sorted(map(re.escape, _GERUND), key=len, reverse=True))
_START = re.compile(r"^\s*\w+ has (\d+) \w+\.")
_STEP = re.compile(rf"\b(?:He|She) ({_VERBS}) (\d+)(?: more)?\.")
_EQUATION = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")
_STARTS = re.compile(r"starts with (\d+) \w+\.")
_SENTENCE = re.compile(rf"After ((?:{_GERUNDS}) \d+(?: and (?:{_GERUNDS}) \d+)*), \w+ has (\d+)\.")
_EVENT = re.compile(rf"({_GERUNDS}) (\d+)")


def problem_steps(question: str) -> tuple[int, list[int]] | None:
    """(start, signed operands) of a built-in word problem, or None if it is not one."""
    start = _START.match(question)
    steps = [_SIGN[v] * int(n) for v, n in _STEP.findall(question)]
    return (int(start.group(1)), steps) if start and steps else None


def verify_steps(question: str, response: str, answer: str) -> bool | None:
    parsed = problem_steps(question)
    final = verify_math(response, answer)
    if parsed is None or final is None:
        return final
    start, steps = parsed
    totals = [start]
    for d in steps:
        totals.append(totals[-1] + d)
    equations = _EQUATION.findall(response)
    if equations:
        if len(equations) != len(steps):
            return False
        for i, (a, op, b, c) in enumerate(equations):
            signed = int(b) if op == "+" else -int(b)
            if int(a) != totals[i] or signed != steps[i] or int(c) != totals[i + 1]:
                return False
        return final
    sentences = _SENTENCE.findall(response)
    if sentences:
        begun = _STARTS.search(response)
        if not begun or int(begun.group(1)) != start:
            return False
        done = 0
        for events, total in sentences:
            for gerund, n in _EVENT.findall(events):
                if done >= len(steps) or _GERUND[gerund] * int(n) != steps[done]:
                    return False
                done += 1
            if int(total) != totals[done]:
                return False
        return final and done == len(steps)
    return final
