"""Held-out suites for a real model: multiple choice by log-likelihood, HumanEval pass@1 in the
sandbox, code / llm examples through the judge, and the label-free drift measure. Fast tier:
the built-in model (transformers) and hand-computed numbers; the real model is in
``test_real_model_eval.py``."""

import json
import math

import pytest

from ray_s3ft.config import JudgeConfig, RolloutConfig, load_config
from ray_s3ft.evaluation.scoring import (
    choice_continuations,
    heldout_sets,
    score_choices,
    score_response,
    score_sets,
)
from ray_s3ft.model.paths import resolve_model_path
from ray_s3ft.tasks import drift, humaneval
from ray_s3ft.tasks.loaders import load_eval_examples
from ray_s3ft.tasks.types import Example
from ray_s3ft.workers.types import Answer, Verdict


def _mc(answer: str, choices=("red", "blue", "green")) -> Example:
    from ray_s3ft.tasks.benchmarks import choice_prompt

    return Example(
        id=f"mc-{answer}", skill="mc", prompt=choice_prompt("Which?", list(choices)),
        gold=answer, answer=answer, verifier="choice", choices=tuple(choices),
    )  # fmt: skip


# --------------------------------------------------------------------- multiple choice


def test_acc_acc_norm_and_chance_by_hand():
    a, b = _mc("A", ("x", "yyyy")), _mc("B", ("one", "three", "fifteen"))
    # a: sums -2.0 vs -3.0 -> A (acc right); per char -2.0 vs -0.75 -> B (acc_norm wrong)
    # b: sums -3.0 -5.0 -7.0 -> A (wrong); per char -1.0, -1.0, -1.0 -> tie, first = A (wrong)
    scores, records = score_choices([a, b], [[-2.0, -3.0], [-3.0, -5.0, -7.0]], "text")
    assert scores == {"accuracy": 0.5, "correct": 1, "n": 2, "unparsed": 0, "acc_norm": 0.0,
                      "chance": (1 / 2 + 1 / 3) / 2}  # fmt: skip
    assert [r["response"] for r in records] == ["A", "A"]
    assert [r["pred_norm"] for r in records] == ["B", "A"]
    # letters are one character each: acc_norm == acc
    scores, _ = score_choices([a, b], [[-2.0, -3.0], [-9.0, -1.0, -7.0]], "letter")
    assert scores["accuracy"] == scores["acc_norm"] == 1.0


def test_continuations_are_the_choice_texts_or_letters():
    ex = _mc("B")
    assert choice_continuations(ex, "text") == ["red", "blue", "green"]
    assert choice_continuations(ex, "letter") == ["A", "B", "C"]
    assert choice_continuations(ex, "cloze") == [" red", " blue", " green"]
    bare = Example(id="x", skill="s", prompt=ex.prompt, gold="B", answer="B", verifier="choice")
    assert choice_continuations(bare, "letter") == ["A", "B", "C"]  # read off the prompt
    with pytest.raises(ValueError):
        choice_continuations(bare, "text")
    with pytest.raises(ValueError, match="one of text, letter, cloze"):
        choice_continuations(ex, "both")


def test_score_sets_generates_nothing_for_choices_and_judges_code():
    math_ex = Example(id="m", skill="t", prompt="1+1?", gold="2", answer="2", verifier="math")
    code = Example(id="c", skill="mbpp", prompt="add", gold="", answer="", verifier="code",
                   tests=("assert add(1, 2) == 3",))  # fmt: skip
    sets = {"task": [math_ex], "mc": [_mc("C"), _mc("A")], "mbpp": [code]}
    asked, scored, judged = [], [], []

    def greedy(prompts):
        asked.extend(prompts)
        return [
            Answer("The answer is 2." if p == "1+1?" else "def add(a, b): return a + b", True)
            for p in prompts
        ]

    def loglik(pairs):
        scored.extend(pairs)
        return [-1.0, -2.0, -0.5] * 2  # C wins, then C wins again

    def judge(items):
        judged.extend(items)
        return [Verdict(True)] * len(items)

    scores, records = score_sets(sets, greedy=greedy, loglik=loglik, judge=judge)
    assert asked == ["1+1?", "add"]  # the choice prompts are not generated
    assert [c for _, c in scored] == ["red", "blue", "green"] * 2
    assert [(i.verifier, i.tests) for i in judged] == [("code", code.tests)]
    assert scores["task"] == {"accuracy": 1.0, "correct": 1, "n": 1, "unparsed": 0,
                              "unfinished": 0, "strict_accuracy": 1.0,
                              "flexible_accuracy": 1.0}  # fmt: skip
    assert scores["mc"]["accuracy"] == 0.5 and scores["mc"]["chance"] == pytest.approx(1 / 3)
    assert scores["mbpp"]["accuracy"] == 1.0
    assert [r["set"] for r in records] == ["task", "mc", "mc", "mbpp"]
    assert records[1]["response"] == "C" and records[1]["loglik"] == [-1.0, -2.0, -0.5]
    with pytest.raises(ValueError, match="need a judge"):
        score_sets({"mbpp": [code]}, greedy=greedy)
    with pytest.raises(ValueError, match="needs a judge"):
        score_response(code, "x")


def test_heldout_sets_leave_out_the_mean_and_drift():
    scores = {"task": {"accuracy": 1.0}, "mc": {"accuracy": 0.5}, "heldout_mean": 0.5,
              "drift": {"kl": 0.1, "k3": 0.1, "tokens": 3, "n": 1}}  # fmt: skip
    assert list(heldout_sets(scores)) == ["mc"]


@pytest.fixture(scope="module")
def builtin_worker():
    from ray_s3ft.workers.rollout import RolloutWorker

    cfg = RolloutConfig(backend="hf", temperature=0.0)
    return RolloutWorker(resolve_model_path("builtin"), cfg, 512, 256)


def test_loglikelihood_is_the_sum_of_continuation_token_logprobs(builtin_worker):
    import torch

    from ray_s3ft.model.encoding import render_prompt

    w = builtin_worker
    pairs = [("Is 7 greater than 3?", "yes"), ("Sort the digits 3 1 2.", "1 2 3"), ("Hi", "")]
    encoded = w.encode_pairs(pairs)
    for (ctx, cont), (c_ids, x_ids) in zip(pairs, encoded, strict=True):
        # the context is exactly the chat-formatted prompt; the continuation is tokenized apart
        assert (
            c_ids
            == w.tokenizer(render_prompt(w.tokenizer, ctx), add_special_tokens=False)["input_ids"]
        )
        assert x_ids == w.tokenizer(cont, add_special_tokens=False)["input_ids"]
    lls = w.loglikelihoods(pairs)
    for (c_ids, x_ids), ll in zip(encoded, lls, strict=True):
        ids = torch.tensor([c_ids + x_ids])
        with torch.inference_mode():
            logp = torch.log_softmax(w.engine.model(ids).logits[0].double(), -1)
        want = sum(logp[len(c_ids) - 1 + k, t].item() for k, t in enumerate(x_ids))
        assert ll == pytest.approx(want, abs=1e-4)
    assert lls[2] == 0.0  # an empty continuation
    # the same tokens the engine decoded: token_logprobs gives the decoding logprobs back
    from ray_s3ft.workers.types import Sampling

    sampling = Sampling(n=1, temperature=0.0, max_new_tokens=12)
    (g,) = w.generate(["Is 9 greater than 4?"], sampling).generations
    (lp,) = w.token_logprobs([(g.prompt_ids, g.token_ids)])
    assert lp == pytest.approx(g.logprobs, abs=1e-4)
    with pytest.raises(ValueError, match="at least one token"):
        w.token_logprobs([([], [1])])


# ------------------------------------------------------------------------------ HumanEval


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail_in_the_sandbox():
    from ray_s3ft.workers.judge import JudgeWorker

    problems = humaneval.load_humaneval("humaneval", 3)
    assert [p.id for p in problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    first = problems[0]
    assert first.verifier == "code" and first.tests[-1] == "check(has_close_elements)"
    assert "```python\nfrom typing import List" in first.prompt
    assert humaneval.code_prompt_of(first).startswith("from typing import List")
    # judge.verifier=llm would send every item to the LLM judge; evaluation routes by item
    judge = JudgeWorker(JudgeConfig(verifier="llm", sandbox_timeout_s=10.0))

    def as_response(ex, code):
        return f"Here it is:\n```python\n{code}\n```\nDone."

    canonical = [as_response(p, p.gold) for p in problems]
    wrong = as_response(first, "def has_close_elements(numbers, threshold):\n    return False\n")
    # only the body, without imports: read as the function's continuation
    body = problems[1].gold[len(humaneval.code_prompt_of(problems[1])) :]
    # the function alone, without the prompt's `from typing import List`
    bare_fn = problems[0].gold.split("\n\n\n", 1)[1]
    sets = {"humaneval": problems + [first, problems[1], first]}
    responses = canonical + [wrong, body, as_response(first, bare_fn)]
    scores, _ = score_sets(
        sets,
        greedy=lambda prompts: [Answer(r, True) for r in responses],
        judge=lambda items: judge.judge(items, by_item=True),
    )
    assert scores["humaneval"] == {
        "accuracy": 5 / 6, "correct": 5, "n": 6, "unparsed": 0, "unfinished": 0
    }  # fmt: skip
    assert judge._llm is None  # no LLM judge was started
    assert humaneval.entry_point_of(Example("x", "s", "p", "", "", "code", ("assert 1",))) is None


def test_humaneval_files_and_config(tmp_path):
    row = {"task_id": "T/0", "prompt": "def one():\n    \"\"\"1\"\"\"\n",
           "canonical_solution": "    return 1\n", "test": "def check(f):\n    assert f() == 1\n",
           "entry_point": "one"}  # fmt: skip
    path = tmp_path / "mini_he.jsonl"
    path.write_text(json.dumps(row) + "\n{broken\n")
    assert humaneval.is_humaneval_entry(str(path))
    assert not humaneval.is_humaneval_entry(str(tmp_path / "missing.jsonl"))
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n")
    assert not humaneval.is_humaneval_entry(str(mc))
    import gzip

    gz = tmp_path / "Other.jsonl.gz"
    gz.write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
    cfg = load_config(overrides=[f"eval.heldout=[{path}, {gz}, {mc}]", "eval.task_size=1"])
    sets = load_eval_examples(cfg.data, cfg.eval)
    assert list(sets) == ["task", "mini_he", "Other", "mc"]
    (ex,) = sets["mini_he"]
    assert ex.tests == (row["test"], "check(one)") and ex.gold == row["prompt"] + "    return 1\n"
    program = humaneval.program(ex, "```python\ndef one():\n    return 1\n```")
    assert program == "def one():\n    return 1\n"


# ------------------------------------------------------------------------------- drift


def test_drift_kl_by_hand():
    items = [
        drift.DriftItem("p", [1], [5, 6], [-1.0, -2.0]),
        drift.DriftItem("q", [1], [7], [-0.5]),
        drift.DriftItem("r", [1], [], []),
    ]
    policy = [[-1.5, -2.0], [-0.25], []]
    d = drift.drift_score(items, policy)
    # log-ratios base - policy: 0.5, 0.0, -0.25 -> mean 0.25 / 3
    assert d["kl"] == pytest.approx((0.5 + 0.0 - 0.25) / 3)
    k3 = [math.exp(r) - 1 - r for r in (-0.5, 0.0, 0.25)]  # r = log p_policy - log p_base
    assert d["k3"] == pytest.approx(sum(k3) / 3) and d["tokens"] == 3 and d["n"] == 3
    same = drift.drift_score(items, [it.base_logprobs for it in items])
    assert same["kl"] == 0.0 and same["k3"] == 0.0
    assert drift.drift_score(items[2:], [[]])["kl"] is None


def test_drift_base_is_made_once_and_kept(tmp_path):
    calls = []

    def greedy_tokens(prompts):
        calls.append(prompts)
        return [([1, 2], [3, 4]) for _ in prompts]

    def make():
        return drift.make_base(["a", "b"], greedy_tokens, lambda pairs: [[-1.0, -2.0]] * 2)

    fp = drift.fingerprint("m", ["a", "b"], 8)
    first = drift.load_or_make_base(tmp_path / "drift_base.json", fp, make)
    again = drift.load_or_make_base(tmp_path / "drift_base.json", fp, make)
    assert first == again and len(calls) == 1
    assert first[0] == drift.DriftItem("a", [1, 2], [3, 4], [-1.0, -2.0])
    drift.load_or_make_base(tmp_path / "drift_base.json", drift.fingerprint("m", ["a"], 8), make)
    assert len(calls) == 2  # another fingerprint: made anew
    assert len(drift.PROMPTS) == 32 and len(set(drift.PROMPTS)) == 32


# ------------------------------------------------------------- on engines (in-process)


def test_evaluate_on_engines_with_choices_code_and_drift(tmp_path, builtin_worker):
    from ray_s3ft.run.cluster import Groups
    from ray_s3ft.run.metrics import eval_metrics
    from ray_s3ft.run.session import evaluate_on_engines, with_drift
    from ray_s3ft.run.train import print_summary
    from ray_s3ft.workers.group import ActorGroup
    from ray_s3ft.workers.judge import JudgeWorker
    from ray_s3ft.workers.rollout import RolloutWorker

    mc = tmp_path / "mini_mc.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Is 7 greater than 3?", "choices": ["yes", "no"], "answer": 0},
        {"question": "Is 2 greater than 8?", "choices": ["yes", "no"], "answer": 1},
    ]))  # fmt: skip
    cfg = load_config(overrides=[
        f"eval.heldout=[compare, {mc}]", "eval.task_size=4", "eval.heldout_size=4",
        "eval.drift=true", "eval.drift_size=3", "eval.max_new_tokens=16",
    ])  # fmt: skip
    rollout = ActorGroup(RolloutWorker, 1, name="rollout", local=True, kwargs={
        "model_path": resolve_model_path("builtin"), "max_model_len": 512,
        "max_prompt_tokens": 256, "cfg": RolloutConfig(backend="hf", temperature=0.0)})  # fmt: skip
    judge = ActorGroup(JudgeWorker, 1, name="judge", local=True,
                       kwargs={"cfg": JudgeConfig(verifier="steps")})  # fmt: skip
    groups = Groups(rollout=rollout, judge=judge, learner=None)
    code = Example(id="c", skill="code", prompt="Write add.", gold="", answer="", verifier="code",
                   tests=("assert add(1, 2) == 3",))  # fmt: skip
    sets = {**load_eval_examples(cfg.data, cfg.eval), "code": [code]}
    sets = with_drift(cfg, groups, sets, tmp_path, "builtin")
    assert (tmp_path / "drift_base.json").is_file() and len(sets["drift"]) == 3
    out = evaluate_on_engines(groups, sets, 16, choice_target="text", items=True)
    items = out.pop("items")  # each question's verdict, for paired comparisons of runs
    assert [(i["set"], i["id"]) for i in items] == [
        (name, ex.id) for name, exs in sets.items() if name != "drift" for ex in exs
    ]
    for name in ("task", "compare", "mini_mc", "code"):
        hits = sum(i["correct"] is True for i in items if i["set"] == name)
        assert hits == out[name]["correct"], name
    assert set(out) == {"task", "compare", "mini_mc", "code", "heldout_mean", "drift"}
    assert out["mini_mc"]["n"] == 2 and out["mini_mc"]["chance"] == 0.5
    assert out["code"] == {
        "accuracy": 0.0, "correct": 0, "n": 1, "unparsed": 0, "unfinished": 0, "prompts_cut": 0
    }  # fmt: skip
    assert out["task"]["prompts_cut"] == out["mini_mc"]["prompts_cut"] == 0  # all fit 256
    assert out["drift"]["kl"] == 0.0 and out["drift"]["tokens"] > 0  # the base against itself
    accs = [out[k]["accuracy"] for k in ("compare", "mini_mc", "code")]
    assert out["heldout_mean"] == pytest.approx(sum(accs) / 3)
    m = eval_metrics(out)
    assert m["eval/drift_kl"] == 0.0 and "eval/heldout/mini_mc_acc_norm" in m
    assert "eval/heldout/drift" not in m
    print_summary({"run_dir": "r", "checkpoint": "c", "accuracy_before": out,
                   "accuracy_after": out, "targets": {"self": 0.5, "paraphrase": 0.2, "gold": 0.3},
                   "targets_reused": False, "steps": {"sft": 1, "grpo": 0}, "faults": {},
                   "wall_s": {"total": 1.0}})  # fmt: skip
