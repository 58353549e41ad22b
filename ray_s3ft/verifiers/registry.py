"""Every verifier by name: the one place the judge workers and evaluation look one up.

An example declares the verifier of its answers (``Example.verifier``); ``judge.verifier`` can
override it for training rewards (``steps`` for the built-in task, ``llm`` for any task). The
rule-based ones read a response in-process (``rule_verdict``); ``code`` runs the program in the
sandbox and ``llm`` asks an LLM judge, both on the judge workers (``workers/judge.py``).
"""

from __future__ import annotations

import re
import string

RULE_BASED = ("math", "steps", "exact", "choice", "nq_match")  # read in-process
NEEDS_JUDGE = ("code", "llm")  # the sandbox or an LLM, on the judge workers
# what an example can declare
EXAMPLE_VERIFIERS = ("math", "code", "llm", "exact", "choice", "nq_match")

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


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ANSWER_IS = re.compile(r"the answer is\s*:?", re.I)
ALIAS_SEP = " | "  # NQ's gold aliases in Example.answer (tasks/loaders.py)


def normalise_answer(text: str) -> str:
    """SQuAD's answer normalisation (Rajpurkar et al., 2016), which NQ-open's exact match
    uses: lower case, ASCII punctuation and the articles a/an/the removed, whitespace
    collapsed."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def short_answer(response: str) -> str:
    """The answer a short-answer response gives: what follows its last "The answer is" to the
    end of that line, else its first non-empty line (less a leading "Answer:")."""
    found = list(_ANSWER_IS.finditer(response))
    if found:
        return response[found[-1].end() :].split("\n", 1)[0].strip()
    line = next((x for x in response.splitlines() if x.strip()), "").strip()
    return re.sub(r"^answer\s*:\s*", "", line, flags=re.I)


def nq_match(response: str, answer: str) -> bool | None:
    """NQ-open's exact match: the response's short answer equals one of the gold aliases
    (``answer``, joined by " | ") after ``normalise_answer``; None when it gives none."""
    got = normalise_answer(short_answer(response))
    if not got:
        return None
    return any(got == normalise_answer(alias) for alias in answer.split(ALIAS_SEP))


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
    if kind == "nq_match":
        return nq_match(response, answer)
    if kind == "choice":
        letter = read_choice(response)
        return None if letter is None else letter == answer.strip().upper()
    raise ValueError(
        f"verifier {kind!r} needs a judge (the sandbox or an LLM judge); "
        f"rule-based verifiers: {', '.join(RULE_BASED)}"
    )
