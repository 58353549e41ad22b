"""How verdicts become targets and rewards for a real model: the judge's extraction mode,
undecided verdicts (counted, and rewarded by config), and a tokenizer without a pad token."""

from __future__ import annotations

import dataclasses

import pytest

from ray_s3ft.config import GRPOConfig, JudgeConfig
from ray_s3ft.run.rewards import reward
from ray_s3ft.run.target_store import TargetRecord, TargetSet
from ray_s3ft.workers.judge import JudgeWorker
from ray_s3ft.workers.types import JudgeItem, Verdict

PROSE = "So, she now has 7 + 4 = 11 shells."


def _judge(mode: str) -> JudgeWorker:
    return JudgeWorker(dataclasses.replace(JudgeConfig(), verifier="math", math_extract=mode))


def test_the_judge_reads_a_correct_answer_in_prose_unless_strict():
    items = [
        JudgeItem("q", PROSE, "11", "math"),
        JudgeItem("q", PROSE, "12", "math"),
        JudgeItem("q", "The answer is 11.", "11", "math"),
        JudgeItem("q", "I do not know.", "11", "math"),
    ]
    flexible = [v.correct for v in _judge("flexible").judge(items)]
    strict = [v.correct for v in _judge("strict").judge(items)]
    assert flexible == [True, False, True, None]
    assert strict == [None, None, True, None]


def test_an_undecided_verdict_gets_the_configured_reward():
    grpo = GRPOConfig()
    assert [reward(Verdict(v), grpo) for v in (True, False, None)] == [1.0, 0.0, 0.0]
    half = dataclasses.replace(grpo, undecided_reward=0.5)
    assert [reward(Verdict(v), half) for v in (True, False, None)] == [1.0, 0.0, 0.5]


def test_the_store_counts_undecided_verdicts_per_rung():
    recs = [
        TargetRecord("a", "p", "g", self_response="s", self_ok=True),
        TargetRecord("b", "p", "g", self_response="s", self_ok=None, paraphrase="x",
                     paraphrase_ok=True),
        TargetRecord("c", "p", "g", self_response="s", self_ok=None, paraphrase="x",
                     paraphrase_ok=None),
        TargetRecord("d", "p", "g", self_response="s", self_ok=False, paraphrase="x",
                     paraphrase_ok=False),
        TargetRecord("e", "p", "g"),  # gold mode: nothing was asked
    ]  # fmt: skip
    store = TargetSet(recs, "s3ft", computed=5, reused=0)
    assert store.undecided() == {"self": 2, "paraphrase": 1}
    assert store.fractions() == pytest.approx({"self": 0.2, "paraphrase": 0.2, "gold": 0.6})


def test_a_tokenizer_without_a_pad_token_pads_with_end_of_sequence(tmp_path):
    from transformers import AutoTokenizer

    from ray_s3ft.model.encoding import encode_sft, load_tokenizer
    from ray_s3ft.model.paths import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("builtin"))
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token_id is None  # as Mistral's
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token_id == loaded.eos_token_id is not None
    ids, attn, mask = encode_sft(loaded, ["1 + 2?", "a much longer question here?"], ["3", "4"], 64)
    short = int(attn[0].sum())
    assert (ids[0, short:] == loaded.eos_token_id).all() and short < ids.shape[1]
    assert mask[0, short:].sum() == 0


@pytest.mark.slow
def test_the_real_model_as_llm_judge_always_rules_by_log_likelihood(smollm2_dir):
    """SmolLM2-135M never writes a clean verdict line (every generated verdict of it we tried
    was unparseable), but it ranks the two: log-likelihood verdicts are never undecided."""
    cfg = JudgeConfig(verifier="llm", llm_model=smollm2_dir, llm_backend="hf")
    assert cfg.llm_mode == "loglik"
    judge = JudgeWorker(cfg, max_model_len=512)
    items = [
        JudgeItem("Which planet do we live on?", "Earth.", "Earth", "llm"),
        JudgeItem("Which planet do we live on?", "We live on Mars.", "Earth", "llm"),
    ]
    verdicts = judge.judge(items)
    assert all(v.correct is not None for v in verdicts)
    margins = [float(v.reason.split()[-1]) for v in verdicts]
    assert margins[0] > margins[1]  # the right candidate is the likelier "correct"


def test_evaluation_reports_math_accuracy_under_both_extractions():
    from ray_s3ft.evaluation.scoring import score_sets
    from ray_s3ft.tasks.types import Example
    from ray_s3ft.workers.types import Answer

    exs = [Example(f"m{i}", "gsm8k", f"q{i}", "", "11") for i in range(4)]
    answers = ["The answer is 11.", PROSE, "So she has 12.", "I cannot tell."]
    for mode, (accuracy, unparsed) in (("flexible", (0.5, 1)), ("strict", (0.25, 3))):
        scores, _ = score_sets(
            {"task": exs}, greedy=lambda p: [Answer(a, True) for a in answers], math_extract=mode
        )
        task = scores["task"]
        assert (task["accuracy"], task["unparsed"]) == (accuracy, unparsed)
        assert (task["strict_accuracy"], task["flexible_accuracy"]) == (0.25, 0.5)
