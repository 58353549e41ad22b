"""The questions' standard errors of a grid and the claims' paired differences, by hand: every
seed answers the same questions, so the questions' error is taken over questions (seeds
averaged per question), never over seeds x questions pooled."""

import json
import math

import pytest

from ray_s3ft.experiments.stats import mean_of_independent, paired_difference, seed_mean_se
from ray_s3ft.workers.types import Answer

# 4 questions x 2 seeds (1 = correct)
A = [[1, 1], [1, 0], [0, 0], [1, 1]]  # per question 1, .5, 0, 1: mean .625; seeds .75, .5
B = [[1, 0], [0, 0], [0, 0], [1, 0]]  # per question .5, 0, 0, .5: mean .25


def test_seed_mean_se_is_over_questions_of_the_seed_means_by_hand():
    r = seed_mean_se(A)
    assert r["mean"] == pytest.approx(0.625) and r["n"] == 4 and r["seeds"] == 2
    # deviations .375, -.125, -.625, .375: squares sum to .6875; sqrt(.6875 / 3 / 4)
    assert r["se"] == pytest.approx(math.sqrt(0.6875 / 3 / 4))  # 0.2394
    # seeds' accuracies .75 and .5: sample std sqrt(2 * .125^2 / 1)
    assert r["seed_std"] == pytest.approx(math.sqrt(0.03125))
    # the pooled binomial error of 8 answers, sqrt(.625 * .375 / 8) = 0.171, is too small
    assert r["se"] > math.sqrt(0.625 * 0.375 / 8) + 0.05
    one = seed_mean_se([[1], [0]])
    assert one["se"] == pytest.approx(0.5) and one["seed_std"] == 0.0  # sd(1, 0) / sqrt(2)


def test_paired_difference_by_hand():
    r = paired_difference(A, B, n_boot=20000, seed=0)
    # d = .5, .5, 0, .5: mean .375; the ideal bootstrap's se is sqrt(sum (d - .375)^2 / 4) / 2
    # = sqrt(.1875 / 4) / 2 = 0.1083
    assert r["diff"] == pytest.approx(0.375) and r["n"] == 4
    assert r["se"] == pytest.approx(math.sqrt(0.1875 / 4) / 2, rel=0.03)
    assert paired_difference(A, B, n_boot=500, seed=3) == paired_difference(A, B, 500, 3)
    same = paired_difference([[1, 0], [0, 1]], [[1, 1], [0, 0]])  # d = -.5, +.5
    assert same["diff"] == 0.0
    flat = paired_difference([[1], [1]], [[0], [0]])  # every question differs by 1
    assert flat == {"diff": 1.0, "se": 0.0, "n": 2}
    assert paired_difference([[1]], [[0]]) == {"diff": 1.0, "se": None, "n": 1}
    with pytest.raises(ValueError, match="2 questions against 1"):
        paired_difference([[1], [0]], [[1]])


def test_mean_of_independent_sets_by_hand():
    r = mean_of_independent([{"diff": 0.1, "se": 0.03, "n": 5}, {"diff": 0.3, "se": 0.04, "n": 7}])
    assert r == pytest.approx({"diff": 0.2, "se": 0.025, "n": 12})  # sqrt(.03^2 + .04^2) / 2
    assert mean_of_independent([{"diff": None, "se": None, "n": 0}])["se"] is None


def _acc(task, heldout):
    out = {"task": {"accuracy": task, "correct": 0, "n": 4, "unparsed": 0}}
    out.update(
        {k: {"accuracy": v, "correct": 0, "n": 2, "unparsed": 0} for k, v in heldout.items()}
    )
    out["heldout_mean"] = sum(heldout.values()) / len(heldout)
    return out


def _cell(out, name, task, held):
    """A finished cell: its summary and its verdicts (task: 4 questions, held-out a: 2)."""
    d = out / "cells" / name
    d.mkdir(parents=True)
    s = {
        "run_dir": str(d),
        "accuracy_after": _acc(sum(task) / 4, {"a": sum(held) / 2}),
        "targets": {"self": 0.5, "paraphrase": 0.3, "gold": 0.2},
        "steps": {"sft": 4, "grpo": 0},
        "wall_s": {"total": 1.0},
    }
    (d / "summary.json").write_text(json.dumps(s))
    items = [{"set": "task", "id": f"t{i}", "h": f"h{i}", "correct": bool(v)} for i, v in
             enumerate(task)] + [{"set": "a", "id": f"a{i}", "h": f"g{i}", "correct": bool(v)}
                                 for i, v in enumerate(held)]  # fmt: skip
    (d / "eval_after.items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))


def test_collect_reports_question_errors_and_the_claims_paired_difference(tmp_path):
    from ray_s3ft.experiments.results import collect, results_markdown

    # seeds are the columns of A and B; held-out a: s3ft x0 [1, 1], x1 [0, 1]; sft x0 [1, 0]
    _cell(tmp_path, "s3ft-s0", [1, 1, 0, 1], [1, 0])
    _cell(tmp_path, "s3ft-s1", [1, 0, 0, 1], [1, 1])
    _cell(tmp_path, "sft_gold-s0", [1, 0, 0, 1], [1, 0])
    _cell(tmp_path, "sft_gold-s1", [0, 0, 0, 0], [0, 0])
    before = _acc(0.4, {"a": 0.5})  # no eval_before.items.jsonl: an old grid's base
    r = collect(
        tmp_path,
        ["base", "sft_gold", "s3ft"],
        [0, 1],
        before,
        {"self": 0.5, "paraphrase": 0.3, "gold": 0.2},
    )
    base, sft, s3ft = r["summary"]
    assert s3ft["task_accuracy"]["mean"] == pytest.approx(0.625)
    assert s3ft["task_accuracy"]["se"] == pytest.approx(math.sqrt(0.6875 / 12))
    assert s3ft["task_accuracy"]["std"] == pytest.approx(math.sqrt(0.03125))  # seeds' spread
    # sft per question .5, 0, 0, .5: sqrt(4 * .25^2 / 3 / 4)
    assert sft["task_accuracy"]["se"] == pytest.approx(math.sqrt(0.25 / 12))
    assert s3ft["heldout"]["a"]["se"] == pytest.approx(0.25)  # sd(1, .5) / sqrt(2)
    assert base["task_accuracy"]["se"] is None
    assert base["task_accuracy"]["se_note"] == "n/a (no per-item record)"
    (claim,) = r["paired"]
    assert claim["claim"] == "s3ft - sft_gold" and claim["task"]["n"] == 4
    assert claim["task"]["diff"] == pytest.approx(0.375)
    assert claim["task"]["se"] == pytest.approx(0.108, abs=0.01)  # 2000 resamples of 0.1083
    # held-out a: d = .5, .5, no spread; its mean over one set is itself
    assert claim["heldout"]["a"] == {"diff": 0.5, "se": 0.0, "n": 2}
    assert claim["heldout_mean"] == {"diff": 0.5, "se": 0.0, "n": 2}
    md = results_markdown(r)
    assert "| base | 40.0 % ± n/a (no per-item record) | 50.0 % ± n/a (no per-item record) |" in md
    assert "| s3ft | 62.5 ± 23.9 % | 75.0 ± 25.0 % | - |" in md
    assert "| s3ft - sft_gold | 4 | +37.5 ± 1" in md and "| +50.0 ± 0.0 | +50.0 ± 0.0 |" in md


def test_claims_without_verdicts_say_so_and_sasr_meets_the_best_static_schedule(tmp_path):
    from ray_s3ft.experiments.questions import claim_pairs, claims

    def agg(method, task):
        return {"method": method, "task_accuracy": {"mean": task}, "heldout": {}}

    summary = [agg("sasr", 0.5), agg("fixed_ratio", 0.4), agg("sft_then_grpo", 0.6)]
    assert claim_pairs(summary) == [
        ("sasr", "fixed_ratio", "sasr - fixed_ratio"),
        ("sasr", "sft_then_grpo", "sasr - best static (sft_then_grpo)"),
    ]
    rows = claims(summary, {"sasr": None, "fixed_ratio": None, "sft_then_grpo": None})
    assert [r.get("note") for r in rows] == ["n/a (no per-item record)"] * 2


def test_pairs_asked_for_follow_the_claims_once_each():
    from ray_s3ft.config import ConfigError
    from ray_s3ft.experiments.compare import parse_pairs
    from ray_s3ft.experiments.questions import claim_pairs

    methods = ["sasr", "sasr_per_mode", "fixed_ratio"]
    assert parse_pairs(" sasr_per_mode-sasr,sasr-fixed_ratio ", methods) == [
        ("sasr_per_mode", "sasr"),
        ("sasr", "fixed_ratio"),
    ]
    assert parse_pairs("", methods) == []
    for bad in ("sasr", "sasr-sasr", "sasr-grpo", "sasr_per_mode+sasr"):
        with pytest.raises(ConfigError, match=r"--pairs: .* \(sasr,sasr_per_mode,fixed_ratio\)"):
            parse_pairs(bad, methods)

    summary = [
        {"method": m, "task_accuracy": {"mean": t}, "heldout": {}}
        for m, t in [("sasr", 0.5), ("sasr_per_mode", 0.6), ("fixed_ratio", 0.4)]
    ]
    # sasr - fixed_ratio is a claim already (best static): not repeated; a pair whose
    # method the grid lacks is left out
    assert claim_pairs(summary, parse_pairs("sasr_per_mode-sasr,sasr-fixed_ratio", methods)) == [
        ("sasr", "fixed_ratio", "sasr - best static (fixed_ratio)"),
        ("sasr_per_mode", "sasr", "sasr_per_mode - sasr"),
    ]
    assert claim_pairs(summary[:2], [("sasr", "fixed_ratio")]) == []


def test_every_evaluation_keeps_each_questions_verdict(tmp_path):
    from ray_s3ft.evaluation.scoring import item_verdicts, prompt_hash, score_sets
    from ray_s3ft.run.session import write_eval
    from ray_s3ft.tasks.types import Example

    sets = {
        "task": [Example("t0", "arith", "1+1?", "2", "2", "exact"),
                 Example("t1", "arith", "2+2?", "4", "4", "exact")],
        "mc": [Example("m0", "mc", "sky?", "", "B", "choice", choices=("red", "blue"))],
    }  # fmt: skip
    scores, records = score_sets(
        sets,
        greedy=lambda ps: [Answer("2", True), Answer("5", True)],
        loglik=lambda pairs: [-2.0, -1.0],
    )
    items = item_verdicts(records)
    assert items == [
        {"set": "task", "id": "t0", "h": prompt_hash("1+1?"), "correct": True},
        {"set": "task", "id": "t1", "h": prompt_hash("2+2?"), "correct": False},
        {"set": "mc", "id": "m0", "h": prompt_hash("sky?"), "correct": True},
    ]
    path = tmp_path / "eval_after.json"
    kept = write_eval(path, {**scores, "items": items})
    assert "items" not in kept and json.loads(path.read_text()) == kept
    lines = (tmp_path / "eval_after.items.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == items


def test_best_within_the_forgetting_budget_by_hand():
    from ray_s3ft.experiments.results import _budget_markdown, within_budget

    def row(method, task, drop, drift):
        return {"method": method, "task_accuracy": {"mean": task},
                "heldout_drop": {"mean": drop}, "drift_k3": {"mean": drift}}  # fmt: skip

    summary = [
        row("base", 0.20, 0.0, None),  # no drift measured: not within a drift budget
        row("sft_gold", 0.80, 0.031, 0.09),  # 3.1 points: over a 2-point budget
        row("s3ft", 0.60, 0.015, 0.02),
        row("ssr", 0.55, -0.004, 0.01),
    ]
    b = within_budget(summary, 2.0, 0.05)
    assert b["within"] == ["s3ft", "ssr"] and b["best"] == "s3ft"
    assert b["best_task_accuracy"] == 0.60
    assert _budget_markdown(b)[0] == (
        "Forgetting budget (held-out drop <= 2 points, drift <= 0.05 nats/token, means over "
        "seeds): the best within it is **s3ft** (task 60.0 %); within: s3ft, ssr."
    )
    # a held-out budget alone lets the base (no drift measured) in; the tightest lets none
    assert within_budget(summary, 2.0, None)["within"] == ["base", "s3ft", "ssr"]
    assert within_budget(summary, 0.1, 0.001)["best"] is None
