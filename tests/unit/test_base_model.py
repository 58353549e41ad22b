"""The shipped base model does what the methods need (measured numbers in docs/builtin.md).

S3FT only means something if the base model already solves a fair part of the task in its own
style, can rewrite a gold answer in its own style, and has skills fine-tuning does not train.
These tests pin those properties with bands around the measured values, on fixed seeded sets.
"""

import pytest

from ray_s3ft.config import load_config
from ray_s3ft.evaluation.evaluate import evaluate
from ray_s3ft.evaluation.generation import generate_greedy_hf
from ray_s3ft.model.paths import resolve_model_path
from ray_s3ft.prompts import build_paraphrase_prompt
from ray_s3ft.tasks import builtin
from ray_s3ft.verifiers.steps import verify_steps


@pytest.fixture(scope="module")
def report():
    return evaluate(
        load_config(overrides=["eval.task_size=200", "eval.heldout_size=100"]),
        progress=lambda _: None,
    )


def test_base_task_accuracy_is_partial(report):
    assert report["task"]["n"] == 200
    assert 0.20 <= report["task"]["accuracy"] <= 0.70, report["task"]
    # answers are in the model's own style: every response states "The answer is N"
    own = [s for s in report["responses"] if s["set"] == "task"]
    assert all("The answer is" in s["response"] and "####" not in s["response"] for s in own)


def test_heldout_skills_are_there(report):
    acc = {k: v["accuracy"] for k, v in report["heldout"].items()}
    # measured on these 100 each: see docs/builtin.md (chance for compare is 50 %)
    assert acc["reverse"] >= 0.80 and acc["sort"] >= 0.50 and acc["compare"] >= 0.60, acc


def test_all_three_s3ft_sources_occur():
    path = resolve_model_path("builtin")
    train = builtin.task_split("train", 128, seed=0)
    own = generate_greedy_hf(path, [e.prompt for e in train], 96)
    para = generate_greedy_hf(path, [build_paraphrase_prompt(e.prompt, e.gold) for e in train], 96)
    # the pipeline's judge for the built-in task: every written step must be right
    self_ok = [verify_steps(e.prompt, r, e.answer) is True for r, e in zip(own, train)]
    para_ok = [verify_steps(e.prompt, r, e.answer) is True for r, e in zip(para, train)]
    n_self = sum(self_ok)
    n_para = sum(p and not s for s, p in zip(self_ok, para_ok))
    n_gold = len(train) - n_self - n_para
    # measured with the shipped model on these 128: self 52, paraphrase 40, gold 36 (on the
    # 512 of the default run: 41.2 / 31.4 / 27.3 %). The paraphrase rung carries a large share
    assert min(n_self, n_para, n_gold) >= 0.05 * len(train), (n_self, n_para, n_gold)
    assert n_para >= 0.25 * len(train) and n_gold <= 0.35 * len(train), (n_self, n_para, n_gold)
    # the paraphrase keeps the model's own style, not the gold's
    assert all("####" not in r for r in para)
