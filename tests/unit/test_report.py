"""``ray-s3ft report`` on synthetic run directories: figures, tables, missing data, grids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ray_s3ft.evaluation.report import main, write_report

FIGURES = ("accuracy", "loss_reward", "schedule", "gate_signals", "targets", "targets_over_time")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _eval(task: float, math_: float, code: float) -> dict:
    def score(acc):
        return {"accuracy": acc, "correct": round(50 * acc), "n": 50, "unparsed": 1}

    return {
        "task": score(task),
        "math": score(math_),
        "code": score(code),
        "heldout_mean": (math_ + code) / 2,
    }


def make_run(
    path: Path,
    *,
    before: dict | None = None,
    after: dict | None = None,
    evals: bool = True,
    seed: int = 0,
    steps: int = 12,
) -> Path:
    """A run directory: ``steps`` metrics rows mixing SFT and GRPO, nulls, two eval rows."""
    path.mkdir(parents=True)
    rows = []
    for step in range(steps):
        mode = "sft" if step < 3 or (step + seed) % 3 == 0 else "grpo"
        row = {
            "step": step,
            "mode": mode,
            "sasr/p_sft": None if step < 3 else 0.6 - 0.03 * step + 0.05 * seed,
            "sasr/grad_norm": None if step < 2 else 2.0 - 0.1 * step + 0.05 * seed,
            "sasr/grad_norm_warm": None if step < 2 else 1.8,
            "sasr/kl": 0.0,
            "learner/loss": (1.2 - 0.05 * step) if mode == "sft" else 0.02 * (step % 4) - 0.03,
            "learner/grad_norm": 1.0,
            "learner/kl": None if step == 0 else 0.004 * step * (1 + seed),
            "learner/entropy": 0.8,
            "reward/mean": 0.0 if step < 3 else 0.3 + 0.03 * step + 0.02 * seed,
            # seed 1: targets that follow the policy, gold ones turning self step by step
            "targets/self_frac": 0.5 + 0.01 * step * seed,
            "targets/para_frac": 0.3,
            "targets/gold_frac": 0.2 - 0.01 * step * seed,
            "timing/step": 3.5,
        }
        if evals and step in (5, steps - 1):
            row.update({
                "eval/task_accuracy": 0.55 + 0.01 * step + 0.03 * seed,
                "eval/heldout_mean": 0.5 - (0.002 + 0.004 * seed) * step,
                "eval/heldout/math": 0.48,
                "eval/heldout/code": 0.5,
            })  # fmt: skip
        rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "schedule": {"kind": "sasr"},
        "algorithm": {"targets": "s3ft"},
        "trainer": {"seed": seed},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    if before is not None:
        summary = {
            "run_dir": str(path),
            "checkpoint": str(path / "checkpoints" / "final"),
            "accuracy_before": before,
            "accuracy_after": after,
            "targets": {"self": 0.625, "paraphrase": 0.25, "gold": 0.125},
            "targets_reused": False,
            "steps": {"sft": 6, "grpo": 6},
            "wall_s": {"startup": 10.0, "train": 400.0, "total": 612.3},
        }
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert path.stat().st_size > 5000, path
    h, w = matplotlib.image.imread(path).shape[:2]
    assert h > 100 and w > 100, (path, h, w)


@pytest.fixture
def two_runs(tmp_path):
    a = make_run(tmp_path / "run_a", before=_eval(0.52, 0.5, 0.46), after=_eval(0.61, 0.46, 0.42))
    b = make_run(
        tmp_path / "run_b", before=_eval(0.52, 0.5, 0.46), after=_eval(0.7, 0.4, 0.4), seed=1
    )
    return a, b


def test_two_runs_figures_and_tables(tmp_path, two_runs):
    out = tmp_path / "out"
    assert main([str(two_runs[0]), str(two_runs[1]), "--out", str(out)]) == 0
    for stem in FIGURES:
        assert_png(out / f"{stem}.png")
    md = (out / "report.md").read_text()
    assert md.startswith("# ")
    for name in ("run_a", "run_b"):
        assert f"## {name}" in md
    # run_a: task 52 -> 61, held-out mean 48 -> 44 (drop 4.0), math 50 -> 46, code 46 -> 42
    assert "| task accuracy | 52.0 % -> 61.0 % |" in md
    assert "| held-out mean | 48.0 % -> 44.0 % |" in md
    assert "| held-out drop (points) | 4.0 |" in md
    assert "| held-out: math | 50.0 % -> 46.0 % |" in md
    assert "| held-out: code | 46.0 % -> 42.0 % |" in md
    assert "62.5 / 25.0 / 12.5 %" in md
    assert "| steps SFT / GRPO | 6 / 6 |" in md
    assert "612.3 s" in md
    # run_b: held-out mean 48 -> 40, drop 8.0; one comparison row per run
    assert "| held-out drop (points) | 8.0 |" in md
    assert "## Comparison" in md
    row_b = next(line for line in md.splitlines() if line.startswith("| run_b |"))
    assert row_b.split(" | ")[1:7] == [
        "52.0 %",
        "70.0 %",
        "48.0 %",
        "40.0 %",
        "8.0",
        "62.5 / 25.0 / 12.5",
    ]
    assert row_b.endswith("| 6 | 6 | 612.3 |")
    for stem in FIGURES:
        assert f"![{stem}]({stem}.png)" in md
    assert "skipped" not in md
    # the trade-off first: run_a gain 9 points, drop 4; run_b 18 and 8: neither beats the other
    assert_png(out / "tradeoff.png")
    lines = md.splitlines()
    assert lines[:5] == ["# ray-s3ft report", "", "2 run(s).", "", "![tradeoff](tradeoff.png)"]
    assert "one point per run; the base model at the origin; error bars: none" in lines[6]
    assert lines[6].endswith("less held-out drop): base, run_a, run_b.")


def _grid_with_summary(grid: Path) -> Path:
    """A grid whose results.json has its methods' means: sasr gains 20 points for a drop of 2
    (± 1 and ± 0.5 over seeds), sft_gold 15 for 6 (beaten by sasr)."""
    cells = []
    for method, seed in (("sasr", 0), ("sasr", 1), ("sft_gold", 0)):
        d = make_run(grid / "cells" / f"{method}-s{seed}", before=_eval(0.5, 0.5, 0.5),
                     after=_eval(0.6, 0.45, 0.45), seed=seed)  # fmt: skip
        cells.append({"method": method, "seed": seed, "run_dir": str(d)})

    def agg(method, gain, drop, std, seeds):
        return {"method": method, "n_seeds": seeds, "task_gain": {"mean": gain, "std": std},
                "heldout_drop": {"mean": drop, "std": std / 2}}  # fmt: skip

    summary = [agg("base", 0.0, 0.0, 0.0, 1), agg("sasr", 0.2, 0.02, 0.01, 2)]
    summary.append(agg("sft_gold", 0.15, 0.06, 0.0, 1))
    (grid / "results.json").write_text(json.dumps({"cells": cells, "summary": summary}))
    return grid


def test_grid_tradeoff_is_one_point_per_method(tmp_path):
    from ray_s3ft.evaluation.tradeoff import ERRORS

    grid = _grid_with_summary(tmp_path / "grid")
    assert main([str(grid), "--out", str(tmp_path / "one")]) == 0
    md = (tmp_path / "one" / "report.md").read_text().splitlines()
    assert md[4] == "![tradeoff](tradeoff.png)"
    assert "one point per method (mean over its seeds)" in md[6]
    assert f"{ERRORS['seeds']} for sasr; {ERRORS['one seed']} for sft_gold" in md[6]
    assert md[6].endswith("less held-out drop): base, sasr.")
    assert_png(tmp_path / "one" / "tradeoff.png")
    # two grids and a run: the grids' methods by grid, the run by its name (gain 10, drop 5)
    other = _grid_with_summary(tmp_path / "other")
    run = make_run(tmp_path / "run_c", before=_eval(0.5, 0.5, 0.5), after=_eval(0.6, 0.4, 0.5))
    assert main([str(grid), str(other), str(run), "--out", str(tmp_path / "two")]) == 0
    md = (tmp_path / "two" / "report.md").read_text().splitlines()
    assert "one point per method (mean over its seeds) or run;" in md[6]
    assert md[6].endswith("drop): base, grid/sasr, other/sasr.")


def test_unfinished_run_without_evals_still_reports(tmp_path, two_runs):
    bare = make_run(tmp_path / "run_bare", evals=False)
    out = tmp_path / "out"
    assert main([str(two_runs[0]), str(bare), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## run_bare" in md and "No summary.json" in md
    bare_row = next(line for line in md.splitlines() if line.startswith("| run_bare |"))
    # steps and target fractions come from metrics.jsonl: 3 warm-up SFT + steps 3, 6, 9 -> 6 SFT
    assert "| - | - | - | - | - | 50.0 / 30.0 / 20.0 | 6 | 6 | - |" in bare_row
    assert_png(out / "accuracy.png")  # run_a still has accuracy data

    alone = tmp_path / "alone"
    assert main([str(bare), "--out", str(alone)]) == 0
    md = (alone / "report.md").read_text()
    assert "*accuracy.png skipped: " in md
    assert not (alone / "accuracy.png").exists()
    # its target split never moved: no picture of it over time, and the report says why
    assert "*targets_over_time.png skipped: no run's target split moved" in md
    for stem in FIGURES[1:-1]:
        assert_png(alone / f"{stem}.png")


def test_run_with_nothing_measured(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0, "mode": null}\n{"step": null}\n[1]\n{"st')
    (run / "config.yaml").write_text("schedule: [unclosed\n")
    nulls = ("accuracy_before", "accuracy_after", "targets", "steps", "wall_s")
    (run / "summary.json").write_text(json.dumps(dict.fromkeys(nulls)))
    report = write_report([run], tmp_path / "out")
    md = report.read_text()
    for stem in FIGURES:
        assert f"*{stem}.png skipped: " in md
    assert "| steps SFT / GRPO | 0 / 0 |" in md
    assert "tradeoff" not in md  # one run alone
    # with a second run, still no accuracies: the picture is skipped, and says why
    md = write_report([run, run], tmp_path / "out2").read_text()
    assert "*tradeoff.png skipped: no task and held-out accuracy before and after.*" in md
    assert not (tmp_path / "out2" / "tradeoff.png").exists()
    assert "| task accuracy | - -> - |" in md and "| held-out drop (points) | - |" in md


def test_single_run_writes_into_the_run_dir(tmp_path, two_runs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([str(two_runs[0])]) == 0
    assert (two_runs[0] / "report.md").is_file()
    assert_png(two_runs[0] / "schedule.png")
    md = (two_runs[0] / "report.md").read_text()
    assert "## Comparison" not in md
    assert not (tmp_path / "report").exists()
    # one run alone: no trade-off picture
    assert "tradeoff" not in md and not (two_runs[0] / "tradeoff.png").exists()


def test_grid_dir_expands_to_cells(tmp_path, monkeypatch):
    grid = tmp_path / "grid"
    cells = []
    for method, seed in (("sasr", 0), ("sasr", 1), ("grpo_only", 0)):
        d = make_run(
            grid / "cells" / f"{method}_s{seed}",
            before=_eval(0.5, 0.5, 0.5),
            after=_eval(0.6, 0.45, 0.45),
            seed=seed,
        )
        cells.append({"method": method, "seed": seed, "run_dir": str(d)})
    (grid / "cells" / "not_a_run").mkdir()
    (grid / "results.json").write_text(json.dumps({"cells": cells, "summary": []}))
    monkeypatch.chdir(tmp_path)
    assert main([str(grid)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    names = [line[3:] for line in md.splitlines() if line.startswith("## ") and "_s" in line]
    assert names == ["grpo_only_s0", "sasr_s0", "sasr_s1"]  # sorted, the non-run folder left out
    assert "method sasr" in md and "method grpo_only" in md
    assert "| held-out drop (points) | 5.0 |" in md
    for stem in FIGURES:
        assert_png(tmp_path / "report" / f"{stem}.png")
    # no means in results.json: one point per cell, all three at (5, 10): a tie, all on the front
    assert_png(tmp_path / "report" / "tradeoff.png")
    assert "drop): base, grpo_only_s0, sasr_s0, sasr_s1." in md


def test_not_a_run_directory(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main([str(missing)]) == 2
    assert (
        f"ray-s3ft report: {missing}: not a run directory (no metrics.jsonl or results.json)"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_a_grid_shipped_without_its_cells_still_gets_its_tradeoff(tmp_path):
    grid = _grid_with_summary(tmp_path / "g")
    shutil.rmtree(grid / "cells")
    out = tmp_path / "out"
    assert main([str(grid), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert_png(out / "tradeoff.png")
    assert "0 run(s)." in md and "![tradeoff](tradeoff.png)" in md
    # without results.json's summary there is nothing to draw from: still an error
    (grid / "results.json").write_text(json.dumps({"cells": []}))
    assert main([str(grid), "--out", str(tmp_path / "out2")]) == 2
