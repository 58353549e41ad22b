"""Math answers: extraction from responses and equivalence through math-verify."""

from __future__ import annotations

import threading

import math_verify
import pytest

from ray_s3ft.verifiers.math import extract_answer, verify_math


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 14.", "14"),
        ("So the answer is 14", "14"),
        ("The answer is: 42", "42"),
        ("Natalia sold 48 + 24 = 72 clips.\n#### 1,234", "1234"),
        # inline, as the built-in task's gold style writes it
        ("Mia starts with 12 apples. After losing 8, she has 4. #### 4", "4"),
        ("After buying 7, he has 19.#### 19", "19"),
        ("The answer is $1,234.50.", "1234.50"),
        ("The answer is -3.", "-3"),
        ("The answer is -$5", "-5"),
        ("The answer is 2.5", "2.5"),
        ("The answer is 3/4. That is all.", "3/4"),
        ("The answer is 14 apples.", "14"),
        ("The answer is **42**.", "42"),
        ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("so $x = \\boxed{\\sqrt{a^{2}+b^{2}}}$", "\\sqrt{a^{2}+b^{2}}"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_the_last_stated_answer_wins():
    assert extract_answer("The answer is 5. Wait, recheck: \\boxed{6}") == "6"
    assert extract_answer("\\boxed{6} is wrong; the answer is 7.") == "7"
    assert extract_answer("The answer is 1. No: the answer is 2.") == "2"


@pytest.mark.parametrize(
    "text", ["no answer here", "The answer is ???", "The answer is", "\\boxed{12", "", None, 14]
)
def test_no_answer_is_none(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    "response, gold, expected",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("The answer is 14.0", "14", True),
        ("The answer is 7/2.", "3.5", True),
        ("The answer is 1,234", "Work.\n#### 1234", True),
        ("The answer is -3", "#### -3", True),
        ("The answer is 3", "-3", False),
        ("The answer is 15.", "She has 5 + 9 = 14 left.\n#### 14", False),
        ("The answer is 1,4", "14", False),  # not a thousands separator: not 14
        ("The answer is $\\frac{6}{8}$", "\\boxed{\\frac{3}{4}}", True),
    ],
)
def test_verify_math(response, gold, expected):
    assert verify_math(response, gold) is expected


@pytest.mark.parametrize("response", ["no answer here", "The answer is ???", ""])
def test_unparseable_response_is_none_not_false(response):
    assert verify_math(response, "14") is None


def test_unparseable_gold_is_none():
    assert verify_math("The answer is 14", "???") is None


def test_math_verify_failure_is_none(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("sympy blew up")

    monkeypatch.setattr(math_verify, "verify", broken)
    assert verify_math("The answer is x + 1", "x + 1") is None  # expressions go to math-verify


def test_safe_outside_the_main_thread():
    results: list[object] = []

    def work() -> None:
        try:
            # math-verify's default signal-based timeout cannot work here: the guard matters.
            with pytest.raises(ValueError, match="thread"):
                math_verify.parse("$1$")
            results.append(verify_math("\\boxed{\\frac{1}{2}}", "0.5"))
            results.append(verify_math("The answer is 3", "#### 4"))
        except BaseException as e:  # surfaced below: a failing thread must fail the test
            results.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert results == [True, False]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("answer", ["9^{9^{9^{9}}}", "2**3**4**5", "10^{100000}", "(9^(9^9))"])
def test_power_towers_are_refused_quickly(answer):
    assert verify_math(f"The answer is ${answer}$.", "14") is None


@pytest.mark.parametrize(
    "response,gold,expected",
    [("The answer is 7/2.", "3.5", True), ("The answer is -3.", "#### -3", True),
     ("The answer is 0.1.", "1/10", True), ("The answer is 2.", "#### 3", False),
     ("The answer is x^2 + y^2.", "y^2 + x^2", True)],
)  # fmt: skip
def test_plain_numbers_compare_exactly_and_expressions_still_verify(response, gold, expected):
    assert verify_math(response, gold) is expected


@pytest.mark.parametrize(
    "text, flexible",
    [
        # a real instruct model's prose: no marker, the last number is the answer
        ("So, she now has 7 + 4 = 11 shells.", "11"),
        ("Ana has 7 - 4 = 3 pens.", "3"),
        ("It costs $1,234.50 in total.", "1234.50"),
        ("He is left with -3 points.", "-3"),
        ("12 / 4 = 3, so each gets 3 cards", "3"),
        # a marker still wins over a later number
        ("The answer is 5. (I checked it 2 times.)", "5"),
        # the prompt's "The answer is N." copied: no digit, so the last number counts
        ("So 7 - 4 = 3 marbles. The answer is N.", "3"),
        # but a boxed answer without a digit is stated on purpose (MATH: \pi, a letter, a word)
        ("Since 2 turns are a half, the angle is $\\boxed{\\pi}$.", "\\pi"),
        ("Of the 5 options, $\\boxed{\\text{(C)}}$", "\\text{(C)}"),
        ("no number at all", None),
    ],
)
def test_flexible_extraction_falls_back_to_the_last_number_and_strict_does_not(text, flexible):
    assert extract_answer(text, "flexible") == flexible
    strict = extract_answer(text)
    marked = "answer is 5" in text or "boxed" in text
    assert strict == (flexible if marked else "N" if "is N" in text else None)


def test_verify_math_in_each_extraction_mode():
    prose = "So, she now has 7 + 4 = 11 shells."
    assert verify_math(prose, "11") is None  # strict: undecided
    assert verify_math(prose, "11", "flexible") is True
    assert verify_math(prose, "12", "flexible") is False
    assert verify_math(prose, "#### 11", "flexible") is True
    with pytest.raises(ValueError, match="strict, flexible"):
        extract_answer(prose, "loose")


def test_the_working_of_a_gold_solution_and_whether_a_paraphrase_keeps_it():
    from fractions import Fraction

    from ray_s3ft.verifiers.math import keeps_working, working_numbers

    gsm8k = (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72.\n#### 72"
    )
    assert working_numbers(gsm8k) == {Fraction(48), Fraction(2), Fraction(24), Fraction(72)}
    assert working_numbers("It costs 1,200.5 in all. The answer is 1200.5") == {Fraction("1200.5")}
    gold = "After losing 3, Lily has 10-3=7 coins.\n#### 7"
    assert working_numbers(gold) == {Fraction(10), Fraction(3), Fraction(7)}  # 10-3: no -3
    assert not keeps_working("The answer is 7.", gold)
    assert not keeps_working("10 coins, minus some, leaves 7. The answer is 7.", gold)
    assert keeps_working("She had 10 and lost 3: 10 - 3 = 7.\nThe answer is 7.", gold)
