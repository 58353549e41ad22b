"""Every verifier by name: the one place the judge workers and evaluation look one up.

An example declares the verifier of its answers (``Example.verifier``); ``judge.verifier`` can
override it for training rewards (``steps`` for the built-in task, ``llm`` for any task). The
rule-based ones read a response in-process (``rule_verdict``); ``code`` runs the program in the
sandbox and ``llm`` asks an LLM judge, both on the judge workers (``workers/judge.py``).
"""

from __future__ import annotations

import re

RULE_BASED = ("math", "steps", "exact", "choice")  # read in-process
NEEDS_JUDGE = ("code", "llm")  # the sandbox or an LLM, on the judge workers
EXAMPLE_VERIFIERS = ("math", "code", "llm", "exact", "choice")  # what an example can declare

# A multiple-choice answer: an optional "The answer is" / "Answer:" lead, then a letter A-J that
# stands alone: in brackets, or followed by the end, punctuation or a line break ("B", "B.",
# "(B)"). After a lead a letter may be lower case, or followed by more words ("... is B because").
_ANSWER_LEAD = re.compile(r"(?:the\s+)?(?:correct\s+)?answer(?:\s+is)?\s*:?\s*", re.I)
_LETTER = r"\(([A-J])\)|\[([A-J])\]|([A-J])(?=[ \t]*(?:$|[\n.):;,-]))"
_BARE_LETTER = re.compile(_LETTER)
_LED_LETTER = re.compile(_LETTER + r"|([A-J])\b", re.I)


def read_choice(response: str) -> str | None:
    """The letter a multiple-choice response starts with ("B", "(B)", "The answer is B"), or None."""
    text = response.strip()
    lead = _ANSWER_LEAD.match(text)
    m = _LED_LETTER.match(text, lead.end()) if lead else _BARE_LETTER.match(text)
    if m is None or (lead and m.group(4) and not m.group(4).isupper()):
        return None
    return next(g for g in m.groups() if g).upper()


def exact_match(response: str, answer: str) -> bool:
    """Equal up to whitespace."""
    return " ".join(response.split()) == " ".join(answer.split())


def rule_verdict(
    kind: str, prompt: str, response: str, answer: str, math_extract: str = "strict"
) -> bool | None:
    """A rule-based verifier's verdict: True / False, or None when it cannot read the
    response. ``math_extract``: how a math answer is read (``verifiers.math``)."""
    if kind == "math":
        from ray_s3ft.verifiers.math import verify_math

        return verify_math(response, answer, math_extract)
    if kind == "steps":
        from ray_s3ft.verifiers.steps import verify_steps

        return verify_steps(prompt, response, answer)
    if kind == "exact":
        return exact_match(response, answer)
    if kind == "choice":
        letter = read_choice(response)
        return None if letter is None else letter == answer.strip().upper()
    raise ValueError(
        f"verifier {kind!r} needs a judge (the sandbox or an LLM judge); "
        f"rule-based verifiers: {', '.join(RULE_BASED)}"
    )
