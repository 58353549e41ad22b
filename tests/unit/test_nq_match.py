"""NQ's default verifier, ``nq_match``: the short answer of a response against any gold alias,
both normalised as SQuAD normalises answers; the LLM judge stays an option."""

from __future__ import annotations

import json

import pytest

from ray_s3ft.config import ConfigError, load_config, resolved_judge
from ray_s3ft.verifiers.registry import nq_match, rule_verdict, short_answer
from ray_s3ft.workers.types import Answer


@pytest.mark.parametrize(
    "response, answer, verdict",
    [
        ("The Beatles", "beatles", True),  # case, the article
        ("beatles", "The Beatles", True),
        ("Paris, France", "Paris", False),  # more words than the gold
        ("Paris, France", "Paris | Paris, France", True),  # ...unless an alias has them
        ("Paris.", "Paris, France | Paris", True),  # trailing punctuation
        ("1,000", "1000", True),  # numbers: punctuation goes, digits stay
        ("1945", "March 1945 | 1945", True),
        ("In 1945", "1945", False),
        ("19", "1945", False),
        ("8", "eight | 8", True),
        ("The answer is Justin Timberlake.", "Justin Timberlake", True),
        ("It was in France. The answer is: Cannes", "Cannes, France | Cannes", True),
        ("Justin Timberlake\nHe played the 2018 show.", "Justin Timberlake", True),  # 1st line
        ("\n\nAnswer: an apple", "apple", True),
        ('Steven "Steve" Hale', 'Steve Hale | Steven "Steve" Hale', True),
        ("", "Paris", None),  # no answer given: undecided, not wrong
        ("...", "Paris", None),
    ],
)
def test_nq_match_by_hand(response, answer, verdict):
    assert nq_match(response, answer) is verdict
    assert rule_verdict("nq_match", "q", response, answer) is verdict


def test_the_short_answer_is_after_the_last_answer_is_else_the_first_line():
    assert short_answer("The answer is A. No wait, the answer is B.\nmore") == "B."
    assert short_answer("  \nLondon\nParis") == "London"


def test_nq_is_judged_by_nq_match_unless_the_config_says_llm(tmp_path):
    from ray_s3ft.evaluation.scoring import score_sets
    from ray_s3ft.tasks.loaders import load_run_data

    def data(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return f"data.{name.split('.')[0]}_path={path}"

    base = ["data.task=nq", "eval.heldout=[]",
            data("train.jsonl", [{"question": "Who sang Help?", "answer": "The Beatles"}]),
            data("eval.jsonl", [{"question": "Capital of France?", "answers": ["Paris"]}])]  # fmt: skip
    cfg = load_config(overrides=base)
    assert resolved_judge(cfg).verifier == "nq_match"
    examples, sets = load_run_data(cfg, tmp_path / "run", say=print)
    assert {ex.verifier for ex in examples + sets["task"]} == {"nq_match"}
    scores, _ = score_sets(sets, greedy=lambda prompts: [Answer("Paris.", True)])  # no judge needed
    assert scores["task"]["accuracy"] == 1.0
    # the LLM judge stays an option, in evaluation too
    cfg = load_config(overrides=[*base, "judge.verifier=llm"])
    examples, sets = load_run_data(cfg, tmp_path / "run", say=print)
    assert {ex.verifier for ex in examples + sets["task"]} == {"llm"}
    with pytest.raises(ConfigError, match="judge.verifier: for data.task=gsm8k must be auto or"):
        load_config(overrides=["judge.verifier=nq_match", "data.task=gsm8k",
                               "data.train_path=x", "data.eval_path=y"])  # fmt: skip
