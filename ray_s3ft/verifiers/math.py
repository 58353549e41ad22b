"""Math answers: pull the final answer out of a response and check it against the gold one.

Responses state their answer in one of three ways: "The answer is N" (the prompt format of the
S3FT paper, arXiv 2502.08130), "#### N" (GSM8K gold solutions) and ``\\boxed{N}`` (MATH).
A real instruct model often states none of them ("So she has 7 + 4 = 11 shells."): in
``flexible`` extraction (``judge.math_extract``) a response without a marker is read by its
last number, as lm-evaluation-harness's "flexible-extract" filter for GSM8K does, and so is
one whose marker (not ``\\boxed``) states no digit at all ("The answer is N.", the prompt's
instruction copied); ``strict`` reads the markers only and leaves the first undecided.
Equivalence (14 == 14.0, 7/2 == 3.5, \\frac{1}{2} == 0.5) is left to math-verify.

math-verify guards ``parse`` and ``verify`` with ``signal.alarm`` timeouts, which raise outside
the main thread; both are called with their timeouts disabled so this runs in Ray actors and
thread pools. Without them a pathological answer could take unbounded time (``9^{9^{9^{9}}}``
makes sympy evaluate a tower of powers), so answers are screened first: plain numbers (the
common case) are compared exactly with ``fractions.Fraction`` without sympy, and answers with
nested powers, exponents of 4+ digits or over ``MAX_ANSWER_CHARS`` characters are refused (None).
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction

# math-verify warns on every call that its timeouts are off; they are off on purpose (above)
logging.getLogger("math_verify").setLevel(logging.ERROR)

MAX_ANSWER_CHARS = 512
# A power whose exponent holds another power (9^{9^9}, 2**3**4) or has 4+ digits (10^{1000}).
_COSTLY_POWER = re.compile(r"(\^|\*\*)\s*[({]?[^+\-=,;]*?(\^|\*\*)|(\^|\*\*)\s*[({]?\s*-?\d{4,}")
# The rest of the line is read in a lookahead so that a later "answer is" on it still matches.
_ANSWER_IS = re.compile(r"answer\s+is\s*:?[ \t]*(?=([^\n]*))", re.IGNORECASE)
# "#### N" on a line of its own (GSM8K) or at the end of a sentence ("... she has 4. #### 4"):
# a model trained on GSM8K-style answers writes both, and both state the answer.
_HASHES = re.compile(r"(?<!#)####(?!#)[ \t]*([^\n]*)")
_BOXED = re.compile(r"\\boxed\s*\{")
# A plain number: 1,234.5 (thousands separators), -3, 2.5, 7/2.
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
_NUMBER_ONLY = re.compile(_NUMBER)
_NUMBER_THEN_WORDS = re.compile(rf"({_NUMBER})\s+[A-Za-z]")
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_CURRENCY = re.compile(r"^(-?)\\?\$\s*(?=\d)")
# flexible extraction: any number, "$1,234.50" and "-3" included; a trailing "." is a full stop
_ANY_NUMBER = re.compile(rf"(?<![\w.])\$?({_NUMBER})")
_UNSIGNED = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
EXTRACT_MODES = ("strict", "flexible")


def extract_answer(text: str, mode: str = "strict") -> str | None:
    """The final answer stated in ``text``, or None when it states none. Never raises.

    Of several stated answers the last one in the text wins: models often correct themselves.
    ``mode="flexible"``: a text that states no answer by a marker gives its last number.
    """
    if mode not in EXTRACT_MODES:
        raise ValueError(f"extraction mode must be one of {', '.join(EXTRACT_MODES)}: {mode!r}")
    if not isinstance(text, str):
        return None
    found: list[tuple[int, str | None, bool]] = []  # (where, answer, whether boxed)
    for m in _ANSWER_IS.finditer(text):
        found.append((m.start(), _clean(m.group(1)), False))
    for m in _HASHES.finditer(text):
        found.append((m.start(), _clean(m.group(1)), False))
    for m in _BOXED.finditer(text):
        content = _balanced(text, m.end())
        found.append((m.start(), _clean(content) if content is not None else None, True))
    if not found:
        return last_number(text) if mode == "flexible" else None
    _, answer, boxed = max(found, key=lambda item: item[0])
    if mode == "flexible" and not boxed and not any(ch.isdigit() for ch in answer or ""):
        # "The answer is N." copied from the prompt's instruction: not an answer. A boxed
        # answer is one the model chose to state: MATH's \boxed{\pi}, \boxed{\text{(C)}}
        return last_number(text)
    return answer


def last_number(text: str) -> str | None:
    """The last number written in ``text`` ("... = 11 shells." -> "11"), separators removed."""
    numbers = _ANY_NUMBER.findall(text)
    return numbers[-1].replace(",", "").replace(" ", "") if numbers else None


def working_numbers(solution: str) -> set[Fraction]:
    """The numbers a worked solution writes before its final-answer line ("#### N", "The
    answer is N"), as exact values: "10-3=7 <<10-3=7>>" -> {10, 3, 7}. Signs are dropped (a
    minus is the operation in "10-3")."""
    body = _HASHES.split(solution)[0]
    if m := _ANSWER_IS.search(body):
        body = body[: m.start()]
    return numbers(body)


def numbers(text: str) -> set[Fraction]:
    """Every unsigned number in ``text`` ("1,234.5" -> 1234.5), as exact values."""
    return {Fraction(raw.replace(",", "")) for raw in _UNSIGNED.findall(text)}


def keeps_working(paraphrase: str, gold_solution: str) -> bool:
    """Whether ``paraphrase`` restates the gold solution's working, not only its answer: every
    number of the gold's working appears in it. "The answer is 7." does not restate "After
    losing 3, Lily has 10-3=7 coins. #### 7"; "She had 10 and lost 3: 10 - 3 = 7." does."""
    return working_numbers(gold_solution) <= numbers(paraphrase)


def verify_math(response: str, gold: str, extract: str = "strict") -> bool | None:
    """True / False when the response's answer is / is not equivalent to the gold answer.

    None when either side has no parseable answer, or math-verify fails: the caller counts
    unparseable responses separately instead of scoring them as wrong. ``extract``: how the
    response's answer is found (``strict`` markers only, or ``flexible``: else its last number).
    """
    predicted = extract_answer(response, extract)
    if predicted is None or not isinstance(gold, str):
        return None
    reference = extract_answer(gold)
    if reference is None:
        reference = _clean(gold.strip())
    if reference is None:
        return None
    exact = _as_fraction(predicted), _as_fraction(reference)
    if None not in exact:
        return exact[0] == exact[1]
    if _COSTLY_POWER.search(predicted) or _COSTLY_POWER.search(reference):
        return None
    try:
        from math_verify import verify

        gold_parsed = _parse(reference)
        pred_parsed = _parse(predicted)
        if not gold_parsed or not pred_parsed:
            return None
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None, raise_on_error=True))
    except Exception:
        return None


def _as_fraction(answer: str) -> Fraction | None:
    """A plain number (-3, 2.5, 7/2) as an exact fraction; None for anything else."""
    if not _NUMBER_ONLY.fullmatch(answer):
        return None
    try:
        return Fraction(answer.replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return None


def _parse(answer: str) -> list:
    """math-verify's parse of one bare answer: as LaTeX first, then as a plain expression."""
    from math_verify import parse

    if len(answer) > MAX_ANSWER_CHARS:
        return []
    # no_fallback: an unparseable answer gives [] rather than its raw string, so that
    # "???" reads as unparseable (None) instead of a wrong answer.
    options = dict(fallback_mode="no_fallback", parsing_timeout=None, raise_on_error=True)
    return parse(f"${answer}$", **options) or parse(answer, **options)


def _balanced(text: str, start: int) -> str | None:
    """The text from ``start`` to the brace closing the one just before it, else None."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _clean(raw: str) -> str | None:
    """A stated answer without its surroundings: math delimiters, currency, full stop, units."""
    text = raw.strip()
    if text.startswith("$"):
        text = text[1:].split("$", 1)[0]
    elif text.startswith(("\\(", "\\[")):
        text = re.split(r"\\[)\]]", text[2:], maxsplit=1)[0]
    else:
        text = _SENTENCE_END.split(text, maxsplit=1)[0]
    text = text.strip().strip("*").strip().rstrip(".,;:!").strip()
    text = _CURRENCY.sub(r"\1", text)
    if _NUMBER_ONLY.fullmatch(text) or (m := _NUMBER_THEN_WORDS.match(text)):
        number = text if _NUMBER_ONLY.fullmatch(text) else m.group(1)
        return number.replace(",", "").replace(" ", "")
    if not text or not any(ch.isalnum() for ch in text):
        return None
    return text
