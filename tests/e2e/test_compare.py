"""``ray-s3ft compare``: aggregation by hand-computed numbers. The smoke grid on the real stack
(one Ray cluster, a vLLM engine, a judge and two DeepSpeed ranks shared by every cell; tracked,
resumed, gathered and reported) runs on the real model: ``tests/real_model/test_real_model_grid.py``."""

import json
import math

import pytest

from ray_s3ft.config import ConfigError
from ray_s3ft.experiments.compare import parse_list
from ray_s3ft.experiments.methods import METHODS
from ray_s3ft.experiments.results import collect, results_markdown


def _acc(task, heldout):
    out = {"task": {"accuracy": task, "correct": 0, "n": 100, "unparsed": 0}}
    out.update(
        {k: {"accuracy": v, "correct": 0, "n": 100, "unparsed": 0} for k, v in heldout.items()}
    )
    out["heldout_mean"] = sum(heldout.values()) / len(heldout)
    return out


def _summary(tmp, name, task, heldout, steps=(3, 1), targets=(0.5, 0.3, 0.2)):
    d = tmp / "cells" / name
    d.mkdir(parents=True)
    s = {
        "run_dir": str(d),
        "accuracy_after": _acc(task, heldout),
        "targets": dict(zip(("self", "paraphrase", "gold"), targets, strict=True)),
        "steps": {"sft": steps[0], "grpo": steps[1]},
        "wall_s": {"total": 10.0},
    }
    (d / "summary.json").write_text(json.dumps(s))


def test_collect_means_and_sample_std_by_hand(tmp_path):
    before = _acc(0.40, {"a": 0.80, "b": 0.60})  # held-out mean 0.70
    _summary(tmp_path, "sft_gold-s0", 0.50, {"a": 0.70, "b": 0.50})  # drop 0.10
    _summary(tmp_path, "sft_gold-s1", 0.60, {"a": 0.60, "b": 0.40})  # drop 0.20
    r = collect(
        tmp_path,
        ["base", "sft_gold"],
        [0, 1],
        before,
        {"self": 0.5, "paraphrase": 0.3, "gold": 0.2},
    )
    base, sft = r["summary"]
    assert base["task_accuracy"]["mean"] == 0.40 and base["task_accuracy"]["std"] == 0.0
    assert base["n_seeds"] == 1
    assert sft["n_seeds"] == 2
    assert sft["task_accuracy"]["mean"] == pytest.approx(0.55)
    # sample std of (0.5, 0.6): sqrt(((0.05)^2 * 2) / 1) = 0.0707...
    assert sft["task_accuracy"]["std"] == pytest.approx(math.sqrt(0.005))
    assert sft["task_gain"]["mean"] == pytest.approx(0.15)
    assert sft["heldout_drop"]["mean"] == pytest.approx(0.15)
    assert sft["heldout_drop"]["std"] == pytest.approx(math.sqrt(0.005))
    assert sft["heldout"]["a"]["mean"] == pytest.approx(0.65)
    # cells without each question's verdict: no standard error of the questions (pooling the
    # seeds' answers would count each question twice; tests/unit/test_stats.py has the errors)
    assert sft["heldout"]["a"]["se"] is None and base["heldout"]["b"]["se"] is None
    md = results_markdown(r)
    na = "± n/a (no per-item record)"
    assert "| sft_gold | 2 | 55.0 ± " in md and f"| 65.0 % {na} | 45.0 % {na} | - |" in md
    assert "| sft_gold | 2 | 55.0 ± 7.1 % | +15.0 ± 7.1 | 55.0 ± 7.1 % | +15.0 ± 7.1 |" in md
    assert "| base | 1 | 40.0 ± 0.0 % | +0.0 ± 0.0 |" in md


def test_collect_skips_unfinished_cells(tmp_path):
    before = _acc(0.40, {"a": 0.80})
    _summary(tmp_path, "s3ft-s0", 0.5, {"a": 0.8})
    r = collect(tmp_path, ["s3ft"], [0, 1], before, {})
    assert [c["seed"] for c in r["cells"]] == [0] and r["summary"][0]["n_seeds"] == 1


def test_an_sdft_cell_shows_its_own_paraphrase_gold_split_not_the_s3ft_stores(tmp_path):
    before = _acc(0.40, {"a": 0.80})
    _summary(tmp_path, "s3ft-s0", 0.5, {"a": 0.8})
    _summary(tmp_path, "sdft-s0", 0.5, {"a": 0.8}, targets=(0.0, 0.25, 0.75))
    store = {"self": 0.5, "paraphrase": 0.3, "gold": 0.2}  # the S3FT store's, for the base row
    r = collect(tmp_path, ["base", "s3ft", "sdft"], [0], before, store)
    assert [a["targets"] for a in r["summary"]][2] == {
        "self": 0.0,
        "paraphrase": 0.25,
        "gold": 0.75,
    }
    md = results_markdown(r)
    assert "| (50.0 / 30.0 / 20.0) |" in md and "| 50.0 / 30.0 / 20.0 |" in md
    assert "| 0.0 / 25.0 / 75.0 |" in md


def test_gather_needs_a_grid_directory(tmp_path):
    from ray_s3ft.experiments.compare import run_grid

    with pytest.raises(ConfigError, match="has no eval_before.json or targets.jsonl: not a grid"):
        run_grid(None, [], ["base", "s3ft"], [0], tmp_path, gather=True)


def test_method_and_seed_lists_are_checked():
    assert parse_list("sft_gold, sasr", "methods", METHODS) == ["sft_gold", "sasr"]
    with pytest.raises(ConfigError, match="unknown sasrr; allowed: base, sft_gold"):
        parse_list("sasrr", "methods", METHODS)
    with pytest.raises(ConfigError, match="listed twice"):
        parse_list("0,0", "seeds")


def test_every_method_is_a_valid_config():
    from ray_s3ft.config import load_config

    for _, overrides in METHODS.values():
        load_config(overrides=overrides)  # raises ConfigError naming the key


def test_methods_only_change_what_a_cell_may_change():
    from ray_s3ft.experiments.methods import CELL_KEYS

    for name, (_, overrides) in METHODS.items():
        assert all(o.startswith(CELL_KEYS) for o in overrides), name


def test_step_worth_recovers_what_each_step_was_worth_by_hand():
    from ray_s3ft.experiments.results import step_worth

    def run(modes, accs):  # eval after every second step
        rows = []
        for i, m in enumerate(modes):
            row = {"step": i, "mode": m}
            if i % 2 == 1:
                row["eval/task_accuracy"] = accs[i // 2]
            rows.append(row)
        return rows, {"task": {"accuracy": 0.5}, "heldout_mean": 0.8}

    # steps 0-2: an SFT step is worth +0.10, a GRPO step +0.02; steps 2-4: -0.01 and +0.03
    runs = [
        run(["sft", "sft", "sft", "sft"], [0.70, 0.68]),
        run(["grpo", "grpo", "grpo", "grpo"], [0.54, 0.60]),
        run(["sft", "grpo", "grpo", "sft"], [0.62, 0.64]),
    ]
    first, second = step_worth(runs)
    assert (first["start"], first["end"], first["cells"]) == (0, 2, 3)
    assert first["sft"] == pytest.approx(0.10) and first["grpo"] == pytest.approx(0.02)
    assert second["sft"] == pytest.approx(-0.01) and second["grpo"] == pytest.approx(0.03)
    assert first["sft_se"] == pytest.approx(0.0, abs=1e-9)  # an exact fit
    # one mix only: a and b cannot be told apart, the segment is left out
    assert step_worth([runs[0]] * 3) == []
