"""SASR without the coin (``schedule.kind: sasr_soft``) with targets that follow the policy, end
to end on the real stack (vLLM engine, judges, two DeepSpeed ranks, the built-in task): after
two warm-up SFT steps every step is one optimizer step on (1 - mu) * GRPO + mu * SFT, with mu
the SASR gate's p_sft; every 2 steps the policy answers the non-self examples again
(``algorithm.targets_refresh_every``), and accepted GRPO samples become self targets
(``algorithm.rehearse_rollouts``).

- the rows say so: modes, mu = p_sft, the SFT part's loss and gradient norm, the GRPO figures;
- the gate reads the SFT part's norm: each step's mu is G / (G + G_warm) computed by hand from
  the previous row's measured norm and the last warm-up step's;
- the targets move toward the model's own answers: the self share never falls, the summary
  and ``targets.followed.jsonl`` agree on what replaced the store's targets;
- exact resume: a run resumed from its step-3 checkpoint repeats steps 3-4 of the straight run
  (the replaced targets are in the checkpoint: the SFT parts train on the same texts).
"""

import json
import math
import shutil

import pytest
from _e2e import train_run

pytestmark = pytest.mark.slow

RUN = [
    "schedule.kind=sasr_soft", "schedule.warmup_steps=2",
    "data.train_size=32", "eval.task_size=16", "eval.heldout_size=8", "eval.every=0",
    "trainer.max_steps=5", "trainer.checkpoint_every=3",
    "algorithm.targets_refresh_every=2", "algorithm.rehearse_rollouts=true",
]  # fmt: skip


def test_sasr_soft_mixes_every_step_with_the_gate_and_resumes_exactly(tmp_path):
    rows, summary, console = train_run(tmp_path, tmp_path / "run", RUN)
    assert [r["mode"] for r in rows] == ["sft", "sft", "mix", "mix", "mix"]
    assert summary["steps"] == {"sft": 2, "grpo": 0, "mix": 3}
    assert "steps: 2 SFT, 0 GRPO, 3 mix" in console
    g_warm = rows[1]["learner/grad_norm"]  # the last warm-up step's SFT norm
    for prev, r in zip(rows[1:], rows[2:], strict=False):
        assert r["mix/mu"] == r["sasr/p_sft"]
        g = prev["mix/sft_grad_norm"] if prev["mode"] == "mix" else prev["learner/grad_norm"]
        assert r["sasr/p_sft"] == pytest.approx(g / (g + g_warm), rel=1e-6)  # gamma 1
        assert math.isfinite(r["mix/sft_grad_norm"]) and r["mix/sft_grad_norm"] > 0
        assert r["mix/sft_loss"] > 0 and "learner/pg_loss" in r and "reward/mean" in r
        # the step's loss is the two parts weighted by mu (KL term beta * kl on the GRPO side)
        mu = r["mix/mu"]
        assert r["learner/loss"] == pytest.approx(
            (1 - mu) * (r["learner/pg_loss"] + 0.04 * r["learner/kl"]) + mu * r["mix/sft_loss"],
            abs=1e-4,
        )
    assert summary["grpo"]["samples"] == 3 * 16  # 4 prompts x G 4, per mix step

    # targets that follow the policy: refreshes after steps 2 and 4 (rows 1 and 3)
    assert [("targets/refresh_asked" in r) for r in rows] == [False, True, False, True, False]
    assert all(r["targets/rehearsed"] >= 0 for r in rows[2:])
    selfs = [r["targets/self_frac"] for r in rows]
    assert selfs == sorted(selfs)  # a target only ever becomes a self one
    followed = [json.loads(x) for x in (tmp_path / "run" / "targets.followed.jsonl").open()]
    assert len(followed) == 32
    f = summary["targets_followed"]
    assert f["refreshes"] == 2 and f["asked"] == sum(
        r.get("targets/refresh_asked", 0) for r in rows
    )
    assert f["replaced"] == sum(x["from"] != "store" for x in followed) > 0
    assert f["rollouts"] == sum(r.get("targets/rehearsed", 0) for r in rows)
    share = sum(x["source"] == "self" for x in followed) / 32
    assert summary["targets"]["self"] == pytest.approx(share) == pytest.approx(selfs[-1])
    assert summary["targets"]["self"] >= f["store"]["self"]

    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "run", cut)
    for ckpt in (cut / "checkpoints").iterdir():  # the step-3 one only, as after a crash
        if ckpt.name != "step_3":
            shutil.rmtree(ckpt)
    resumed, _, _ = train_run(tmp_path, cut, RUN)
    assert [r["step"] for r in resumed] == list(range(5))
    for a, b in zip(rows[3:], resumed[3:], strict=True):
        assert b["mode"] == a["mode"] and b["sasr/p_sft"] == pytest.approx(a["sasr/p_sft"])
        assert b["rollout/sample_digest"] == a["rollout/sample_digest"], a["step"]
        assert b["learner/loss"] == pytest.approx(a["learner/loss"], abs=1e-6), a["step"]
        assert b["mix/sft_grad_norm"] == pytest.approx(a["mix/sft_grad_norm"], rel=1e-5)
