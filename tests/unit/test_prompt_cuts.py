"""Prompts longer than an engine's prompt budget: evaluation counts the ones it cuts, and the
LLM judge never cuts its own (the instructions are at the start): it leaves them undecided."""

import logging

import pytest

from ray_s3ft.config import JudgeConfig
from ray_s3ft.evaluation.scoring import prompts_cut_note, score_sets
from ray_s3ft.tasks.types import Example
from ray_s3ft.workers.judge import JudgeWorker
from ray_s3ft.workers.rollout import RolloutWorker
from ray_s3ft.workers.types import Answer, JudgeItem, Verdict


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ray_s3ft.model.paths import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("builtin"))


def _worker(tokenizer, max_prompt_tokens: int) -> RolloutWorker:
    worker = object.__new__(RolloutWorker)  # the tokenizer and the budget, no engine
    worker.tokenizer, worker.max_prompt_tokens = tokenizer, max_prompt_tokens
    return worker


def test_the_engine_says_which_prompts_it_cuts(tokenizer):
    # "x" chat-formatted: <|user|> \n x \n <|assistant|> \n, 6 tokens; "x y": 8 (x, ' ', y)
    # "Question: x\nAnswer:" as plain text: Question / : / ' ' / x / \n / A / ns / wer / :, 9
    worker = _worker(tokenizer, 6)
    assert worker.prompts_cut(["x", "x y"]) == [False, True]
    assert worker.prompts_cut(["Question: x\nAnswer:"], raw=True) == [True]
    assert _worker(tokenizer, 9).prompts_cut(["Question: x\nAnswer:"], raw=True) == [False]


def test_evaluation_counts_the_cut_prompts_of_each_set():
    from ray_s3ft.tasks.benchmarks import _example

    short, long = (
        Example(f"a{i}", "t", p, "", "7", "exact") for i, p in enumerate(["7?", "7 " * 20])
    )
    mc = [  # cloze contexts of 22 and 45 characters
        _example({"question": q, "choices": ["ice", "fire"], "answer": 1}, "mc", str(i))
        for i, q in enumerate(["Hot?", "Which one of these is hot?"])
    ]
    asked = []

    def cut(prompts, raw=False):  # a budget of 30 characters: "7 " * 20 is 40
        asked.append((list(prompts), raw))
        return [len(p) > 30 for p in prompts]

    scores, _ = score_sets(
        {"task": [short, long, long], "mc": mc},
        greedy=lambda prompts: [Answer("7", True)] * len(prompts),
        loglik=lambda pairs, raw=False: [-1.0] * len(pairs),
        choice_target="cloze",
        cut=cut,
    )
    assert (scores["task"]["prompts_cut"], scores["mc"]["prompts_cut"]) == (2, 1)
    assert asked[1] == (["Question: Hot?\nAnswer:", "Question: Which one of these is hot?\nAnswer:"], True)  # fmt: skip
    assert prompts_cut_note(scores) == (
        "warning: prompts longer than data.max_prompt_tokens, seen without their start: "
        "task 2 of 3, mc 1 of 2"
    )
    scores, _ = score_sets({"task": [short]}, greedy=lambda p: [Answer("7", True)], cut=cut)
    assert scores["task"]["prompts_cut"] == 0 and prompts_cut_note(scores) is None


class FakeJudgeEngine:
    """Prompts over 300 characters are "too long" (the template alone is about 170); every judged prompt gets a verdict line."""

    def __init__(self):
        self.judged = []

    def prompts_cut(self, prompts, raw=False):
        return [len(p) > 300 for p in prompts]

    def greedy(self, prompts, max_new_tokens):
        self.judged += prompts
        return ["Verdict: correct"] * len(prompts)


def test_the_llm_judge_leaves_a_prompt_too_long_undecided_and_counts_it(caplog):
    judge = JudgeWorker(JudgeConfig(verifier="llm", llm_mode="generate"), max_model_len=512)
    assert judge.max_prompt_tokens == 512 - 16  # what the engine leaves beside the verdict
    judge._llm = engine = FakeJudgeEngine()
    items = [
        JudgeItem("Capital of France?", "Paris", "Paris", "llm"),
        JudgeItem("Capital of France?", "Paris " * 30, "Paris", "llm"),
        JudgeItem("Capital of Italy?", "Rome", "Rome", "llm"),
    ]
    with caplog.at_level(logging.WARNING, logger="ray_s3ft.workers.judge"):
        verdicts = judge.judge(items)
    assert verdicts == [
        Verdict(True, ""), Verdict(None, "judge prompt too long"), Verdict(True, "")
    ]  # fmt: skip
    assert len(engine.judged) == 2 and "Rome" in engine.judged[1]  # the long one never sent
    assert "1 of 3 LLM-judge prompts are longer than 496 tokens" in caplog.text
