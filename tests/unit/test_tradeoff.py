"""The trade-off picture: the Pareto front by hand, the error bars each point gets, and
``ray-s3ft compare`` writing ``tradeoff.png`` with ``results.md`` showing it first."""

from __future__ import annotations

import json
import math
import random
import types

import pytest
from test_report import assert_png
from test_stats import _acc, _cell

from ray_s3ft.evaluation.tradeoff import ERRORS, Point, errors_text, grid_points, pareto_front


def _names(points):
    return [p.name for p in points]


def test_pareto_front_by_hand():
    points = [
        Point("base", 0.0, 0.0, base=True),
        Point("a", 1.0, 10.0),
        Point("b", 2.0, 20.0),
        Point("b_twin", 2.0, 20.0),  # the same point as b: neither dominates the other
        Point("c", 3.0, 15.0),  # more drop and less gain than b
        Point("d", 2.0, 18.0),  # b's drop, less gain: dominated
        Point("e", 0.5, 0.0),  # the base's gain with more drop: dominated
        Point("f", -1.0, -2.0),  # held-out improved, task lost: nothing beats it on drop
    ]
    want = ["f", "base", "a", "b", "b_twin"]  # by drop, then gain, then name
    assert _names(pareto_front(points)) == want
    for seed in range(5):  # the input order changes nothing
        shuffled = points[:]
        random.Random(seed).shuffle(shuffled)
        assert _names(pareto_front(shuffled)) == want
    # a tie in gain: the smaller drop wins; a tie in drop: the larger gain wins
    assert _names(pareto_front([Point("x", 1.0, 5.0), Point("y", 2.0, 5.0)])) == ["x"]
    assert _names(pareto_front([Point("x", 1.0, 5.0), Point("y", 1.0, 6.0)])) == ["y"]
    assert _names(pareto_front([Point("only", 3.0, -1.0)])) == ["only"]
    assert pareto_front([]) == []


def _agg(method, gain, drop, gain_std, drop_std, seeds, vs_base=None):
    a = {
        "method": method,
        "n_seeds": seeds,
        "task_gain": {"mean": gain, "std": gain_std},
        "heldout_drop": {"mean": drop, "std": drop_std},
    }
    return a if vs_base is None else {**a, "vs_base": vs_base}


def test_grid_points_prefer_the_paired_error_then_the_seeds_spread():
    paired = {"task": {"diff": 0.3, "se": 0.02, "n": 50}, "heldout_mean": {"se": 0.01}}
    results = {
        "summary": [
            _agg("base", 0.0, 0.0, 0.0, 0.0, 1),
            _agg("s3ft", 0.3, 0.05, 0.04, 0.03, 3, vs_base=paired),
            _agg("sasr", 0.2, 0.02, 0.05, 0.01, 2),  # no verdicts: the seeds' std
            _agg("grpo", 0.1, -0.01, 0.0, 0.0, 1),  # one seed: no bar
            _agg("cut", None, None, None, None, 0),  # no numbers: no point
        ]
    }
    s3ft, sasr, grpo = grid_points(results)
    assert (s3ft.name, s3ft.drop, s3ft.gain) == ("s3ft", pytest.approx(5.0), pytest.approx(30.0))
    assert (s3ft.drop_err, s3ft.gain_err, s3ft.errors) == (1.0, 2.0, "paired")
    assert (sasr.drop_err, sasr.gain_err, sasr.errors) == (1.0, 5.0, "seeds")
    assert (grpo.drop, grpo.drop_err, grpo.errors) == (-1.0, None, "one seed")
    text = errors_text([s3ft, sasr, grpo])
    assert text == (
        f"{ERRORS['paired']} for s3ft; {ERRORS['seeds']} for sasr; {ERRORS['one seed']} for grpo"
    )
    assert errors_text([s3ft]) == ERRORS["paired"]
    assert errors_text([Point("run_a", 1.0, 2.0)]) == "none (one run per point)"
    assert _names(grid_points(results, "g/")) == ["g/s3ft", "g/sasr", "g/grpo"]


def test_compare_writes_the_tradeoff_figure_first_in_results_md(tmp_path):
    """A grid of hand-made cells with each question's verdict: the base answers task
    [1, 0, 0, 0] and held-out a [1, 1]; s3ft's two seeds the columns of [1 1, 1 0, 0 0, 1 1]
    and [1 1, 0 1]; sft_gold's [1 0, 0 0, 0 0, 1 0] and [1 0, 0 0]."""
    from ray_s3ft.experiments.compare import _finish

    _cell(tmp_path, "s3ft-s0", [1, 1, 0, 1], [1, 0])
    _cell(tmp_path, "s3ft-s1", [1, 0, 0, 1], [1, 1])
    _cell(tmp_path, "sft_gold-s0", [1, 0, 0, 1], [1, 0])
    _cell(tmp_path, "sft_gold-s1", [0, 0, 0, 0], [0, 0])
    base = [{"set": "task", "id": f"t{i}", "h": f"h{i}", "correct": i == 0} for i in range(4)]
    base += [{"set": "a", "id": f"a{i}", "h": f"g{i}", "correct": True} for i in range(2)]
    (tmp_path / "eval_before.items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in base))
    store = types.SimpleNamespace(fractions=lambda: {"self": 0.5, "paraphrase": 0.3, "gold": 0.2})
    methods = ["base", "sft_gold", "s3ft"]
    r = _finish(None, [], methods, [0, 1], tmp_path, _acc(0.25, {"a": 1.0}), store, 0.0)

    # s3ft: task .625 (gain 37.5 points), held-out .75 (drop 25); per question minus the base:
    # task d = 0, .5, 0, 1 (the ideal bootstrap's se sqrt(.6875 / 4) / 2 = .2073), held-out
    # d = 0, -.5 (se .25 / sqrt(2) = .1768). sft_gold: gain 0, drop 75: the base dominates it
    s3ft = next(a for a in r["summary"] if a["method"] == "s3ft")
    assert s3ft["vs_base"]["task"]["diff"] == pytest.approx(0.375)
    assert s3ft["vs_base"]["task"]["se"] == pytest.approx(math.sqrt(0.6875 / 4) / 2, rel=0.05)
    assert s3ft["vs_base"]["heldout_mean"]["diff"] == pytest.approx(-0.25)
    assert s3ft["vs_base"]["heldout_mean"]["se"] == pytest.approx(0.25 / math.sqrt(2), rel=0.05)
    assert r["tradeoff"] == {
        "figure": "tradeoff.png",
        "front": ["base", "s3ft"],
        "errors": ERRORS["paired"],
    }
    assert json.loads((tmp_path / "results.json").read_text())["tradeoff"] == r["tradeoff"]
    assert_png(tmp_path / "tradeoff.png")
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert lines[:3] == ["# ray-s3ft compare", "", "![tradeoff](tradeoff.png)"]
    assert lines[4].endswith("The Pareto front (no other point has both more task gain and "
                             "less held-out drop): base, s3ft.")  # fmt: skip
    assert ERRORS["paired"] in lines[4]
    assert lines.index("![tradeoff](tradeoff.png)") < min(
        i for i, line in enumerate(lines) if line.startswith("| method |")
    )


def test_a_grid_without_a_trained_method_has_no_figure(tmp_path):
    from ray_s3ft.experiments.compare import _finish
    from ray_s3ft.experiments.results import results_markdown

    (tmp_path / "tradeoff.png").write_bytes(b"stale")
    store = types.SimpleNamespace(fractions=lambda: {"self": 0.5, "paraphrase": 0.3, "gold": 0.2})
    r = _finish(None, [], ["base", "s3ft"], [0], tmp_path, _acc(0.25, {"a": 1.0}), store, 0.0)
    assert "tradeoff" not in r and not (tmp_path / "tradeoff.png").exists()
    assert "![tradeoff]" not in results_markdown(r)
