"""metrics.jsonl stays strict JSON, and a resumed run never holds a step twice."""

import json
import math

from ray_s3ft.run.metrics import MetricsLogger


def test_non_finite_values_are_null_and_ints_stay_ints(tmp_path):
    m = MetricsLogger(tmp_path)
    m.log({"step": 0, "mode": "sft", "sasr/grad_norm_ema": math.nan, "learner/loss": 1.5})
    m.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 0, "mode": "sft", "sasr/grad_norm_ema": None, "learner/loss": 1.5}
    assert list((tmp_path / "tensorboard").iterdir())  # event file written


def test_resume_drops_the_steps_after_the_checkpoint(tmp_path):
    m = MetricsLogger(tmp_path)
    for step in range(5):
        m.log({"step": step, "learner/loss": float(step)})
    m.close()
    m = MetricsLogger(tmp_path, first_step=3)  # checkpoint at step 3: steps 3, 4 are rerun
    m.log({"step": 3, "learner/loss": 30.0})
    m.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["learner/loss"] == 30.0


def _row(step, mode, loss, reward, p_sft, seconds, **extra):
    return {"step": step, "mode": mode, "learner/loss": loss, "reward/mean": reward,
            "sasr/p_sft": p_sft, "timing/step": seconds, **extra}  # fmt: skip


def test_step_line_shows_what_the_step_did():
    from ray_s3ft.run.metrics import step_line

    grpo = _row(20, "grpo", 0.0123, 0.3125, 0.4, 9.0)
    assert step_line(grpo, 100, 66.0) == (
        "step 21/100 grpo loss 0.0123 reward 0.312 p_sft 0.40 eta 1m06s"
    )
    # an SFT step's row carries the latest GRPO reward (0.3125 of step 21): not on its line
    sft = _row(21, "sft", 0.2092, 0.3125, 0.4, 2.0)
    assert step_line(sft, 100, None) == "step 22/100 sft  loss 0.2092 p_sft 0.40"
    assert step_line(sft, 100, 42.4).endswith(" eta 42s")
    assert step_line(sft, 100, 7380.0).endswith(" eta 2h03m")


def test_eta_weights_each_modes_mean_step_time_by_p_sft():
    from ray_s3ft.run.metrics import eta_seconds

    # SFT steps took 2 s and 4 s (mean 3), the GRPO step 10 s; p_sft 0.25, 8 steps left:
    # 8 * (0.25 * 3 + 0.75 * 10) = 8 * 8.25 = 66 s
    assert eta_seconds({"sft": [2.0, 4.0], "grpo": [10.0]}, 0.25, 8) == 66.0
    # no GRPO step yet: the SFT mean stands in for it; none at all: unknown
    assert eta_seconds({"sft": [2.0, 4.0], "grpo": []}, 0.5, 10) == 30.0
    assert eta_seconds({"sft": [], "grpo": []}, 1.0, 10) is None


def test_progress_lines_with_an_eval_step(capsys):
    from ray_s3ft.run.metrics import Progress

    p = Progress(4)  # not a terminal under pytest: one plain line per step
    p.update(_row(0, "sft", 1.5, 0.0, 1.0, 2.0))
    # the GRPO step evaluated too: 6 s + 4 s of eval = 10 s
    p.update(_row(1, "grpo", 0.25, 0.5, 0.5, 6.0, **{"timing/eval": 4.0}))
    p.close()
    lines = capsys.readouterr().out.splitlines()
    # step 1: 3 left, p_sft 1, SFT mean 2 s -> 6 s; step 2: 2 left, 0.5 * 2 + 0.5 * 10 = 6 -> 12 s
    assert lines == [
        "step 1/4 sft  loss 1.5000 p_sft 1.00 eta 6s",
        "step 2/4 grpo loss 0.2500 reward 0.500 p_sft 0.50 eta 12s",
    ]
