"""LLM-as-judge: the prompt a judge model answers, and a strict parser of its verdict.

The S3FT paper (arXiv 2502.08130) uses the base model itself as the judge for reading
comprehension: it sees the question, the gold answer and a prediction and says whether the
prediction is correct. A judge's free text is untrusted, so the parser accepts exactly one
verdict line and returns ``None`` (counted by the caller, never raised) for anything else.
"""

from __future__ import annotations

import re

VERDICT_CORRECT = "Verdict: correct"
VERDICT_INCORRECT = "Verdict: incorrect"

JUDGE_TEMPLATE = (
    "Judge the candidate answer.\n"
    "Question: {question}\n"
    "Reference: {reference}\n"
    "Candidate: {candidate}\n"
    f"Is the candidate correct? Reply with '{VERDICT_CORRECT}' or '{VERDICT_INCORRECT}'."
)

# One verdict line, optionally followed by a full stop; nothing else on that line.
_VERDICT_LINE = re.compile(r"^\s*verdict\s*:\s*(correct|incorrect)\s*\.?\s*$", re.IGNORECASE)


def _one_line(text: str) -> str:
    # Each field is folded onto its own line, so a candidate that contains a line reading
    # "Verdict: correct" cannot plant a parseable verdict in the prompt for a judge to echo.
    return " ".join(text.split())


def build_judge_prompt(question: str, reference: str, candidate: str) -> str:
    """The user message a judge model receives (the chat template is applied by the engine)."""
    return JUDGE_TEMPLATE.format(
        question=_one_line(question), reference=_one_line(reference), candidate=_one_line(candidate)
    )


def parse_verdict(text: str | None) -> bool | None:
    """True / False for exactly one well-formed verdict line, else None (unparseable).

    Two verdict lines are rejected even when they agree: a judge that repeats itself is
    rambling, and we would rather count it than guess.
    """
    if not text:
        return None
    found = [m.group(1).lower() for line in text.splitlines() if (m := _VERDICT_LINE.match(line))]
    if len(found) != 1:
        return None
    return found[0] == "correct"
