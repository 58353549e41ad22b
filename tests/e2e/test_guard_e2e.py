"""The forgetting budget end to end on the real stack (vLLM engine, judges, two DeepSpeed ranks,
the built-in task): a drift budget no trained weights can meet (``guard.max_drift`` 1e-7 nats
per token) with ``guard.action: stop``.

- the first in-loop evaluation (after step 2) is over budget: training stops there, and the
  row and the console say why;
- no check was ever within budget, so the weights reported are the base model's: the learners
  are reset, the engines synced, and the final evaluation equals the base model's on every
  question; the summary names that choice and why;
- the checkpoint at the stop holds the breach (a resumed run stays stopped: unit-tested).
"""

import json

import pytest
from _e2e import train_run

pytestmark = pytest.mark.slow

RUN = [
    "schedule.kind=sft", "data.train_size=32", "eval.task_size=16", "eval.heldout_size=8",
    "eval.every=2", "eval.every_size=8", "eval.drift=true", "eval.drift_size=4",
    "trainer.max_steps=6", "trainer.checkpoint_every=2",
    "guard.max_drift=1e-7", "guard.action=stop",
]  # fmt: skip


def last_reasons(row):
    return [f"drift {row['guard/drift']:.4g} nats/token > guard.max_drift 1e-07"]


def _verdicts(path):
    return [(x["set"], x["id"], x["correct"]) for x in map(json.loads, path.open())]


def test_a_drift_budget_stops_the_run_and_reports_the_base_model(tmp_path):
    out = tmp_path / "run"
    rows, summary, console = train_run(tmp_path, out, RUN)
    assert [r["step"] for r in rows] == [0, 1]  # stopped after the step-2 evaluation
    last = rows[-1]
    assert last["guard/within"] == 0.0 and last["guard/drift"] > 1e-7
    assert last["guard/drift"] == last["eval/drift_k3"] and last["guard/breaches"] == 1
    g = summary["guard"]
    assert g["stopped_at"] == 2 and g["breaches"] == 1 and g["best"] is None
    assert g["chosen"]["weights"] == "base" and g["chosen"]["why"].startswith(
        "over budget at step 2 (drift "
    )
    assert summary["checkpoint"] is None and summary["steps"] == {"sft": 2, "grpo": 0}
    assert "guard: over the forgetting budget at step 2" in console
    assert "guard: " + g["chosen"]["why"] in console
    # the base model's weights, evaluated again: the same verdict on every question
    assert _verdicts(out / "eval_after.items.jsonl") == _verdicts(out / "eval_before.items.jsonl")
    before = json.loads((out / "eval_before.json").read_text())
    assert summary["accuracy_after"]["task"] == before["task"]
    assert summary["accuracy_after"]["drift"]["k3"] == pytest.approx(0.0, abs=1e-6)
    # the step-2 checkpoint holds the breach: a resumed run stays stopped
    # (tests/unit/test_guard.py::test_a_resumed_run_the_budget_stopped_stays_stopped)
    state = json.loads((out / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["guard"]["last"] == {"step": 2, "within": False, "reasons": last_reasons(last)}
