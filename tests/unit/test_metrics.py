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
