"""``ray-s3ft compare``: a grid of methods x seeds at the same budget, on one set of actors.

    ray-s3ft compare --config FILE --methods sft_gold,s3ft,sasr --seeds 0,1,2 [key=value ...]

Every cell trains from the base model with the same data, steps, learning rate and evaluation;
only the method's own settings (schedule kind, SFT targets, gate options) and the seed change.
The Ray cluster, the rollout engines, the judges and the learner ranks are started once: between
cells the learners reset to the base weights (fresh optimizer and KL reference) and the engines
get the base weights with the next sync. The base model is evaluated once and the S3FT target
store is built once; every cell reads the rung its method asks for from that store.

A finished cell (its ``summary.json`` exists) is skipped, so an interrupted grid resumes where
it stopped; a cell cut short resumes from its last checkpoint. Results:

    OUT/results.json   every cell, and mean / std per method over seeds
    OUT/results.md     the same as tables
    OUT/cells/<method>-s<seed>/   each cell's run directory (metrics, summary, checkpoints)

A seed sets the controller's data order, the schedule's draws, every rollout request's sampling
seed and the learners' torch seed: a cell samples the same tokens whichever cells ran before it
on the same engines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

from ray_s3ft.config import ConfigError, load_config, save_config
from ray_s3ft.console import say
from ray_s3ft.target_store import STORE, TargetSet, read_store
from ray_s3ft.tracking import Trackers, grid_group

# Each method is a set of overrides of the keys a cell may change (CELL_KEYS): the actors are
# shared by every cell, so a method may not change what they were built with. The learners take
# the cell's learner.optimizer_state and algorithm.grpo.* when they reset (LearnerActor.reset).
CELL_KEYS = ("schedule.", "algorithm.", "learner.optimizer_state=")
_SASR = ["schedule.kind=sasr", "algorithm.targets=s3ft"]
METHODS: dict[str, tuple[str, list[str]]] = {
    "base": ("the base model, no training", []),
    "sft_gold": ("SFT on the gold answers", ["schedule.kind=sft", "algorithm.targets=gold"]),
    "ssr": ("SFT on SSR targets (self | gold)", ["schedule.kind=sft", "algorithm.targets=ssr"]),
    "s3ft": (
        "SFT on S3FT targets (self | paraphrase | gold)",
        ["schedule.kind=sft", "algorithm.targets=s3ft"],
    ),
    "grpo": ("GRPO only", ["schedule.kind=grpo"]),
    "sft_then_grpo": (
        "S3FT SFT for warmup_steps, then GRPO",
        ["schedule.kind=sft_then_grpo", "algorithm.targets=s3ft"],
    ),
    "fixed_ratio": (
        "SFT (S3FT targets) with probability schedule.p_sft, else GRPO",
        ["schedule.kind=fixed_ratio", "algorithm.targets=s3ft"],
    ),
    "sasr_gold": ("SASR, SFT steps on gold", ["schedule.kind=sasr", "algorithm.targets=gold"]),
    "sasr": ("SASR, SFT steps on S3FT targets", ["schedule.kind=sasr", "algorithm.targets=s3ft"]),
    "sasr_probe": (
        "SASR + gradient probes every 4 GRPO steps (ours)",
        ["schedule.kind=sasr", "algorithm.targets=s3ft", "schedule.sasr.probe_every=4"],
    ),
    "sasr_kl": (
        "SASR + KL term in the gate (ours)",
        ["schedule.kind=sasr", "algorithm.targets=s3ft", "schedule.sasr.lam=1.0"],
    ),
    "sasr_base_ref": (
        "SASR with the base model as KL reference (the old baselines' rule)",
        [*_SASR, "schedule.reference=base"],
    ),
    "sasr_per_mode": (
        "SASR, one Adam state per mode",
        [*_SASR, "learner.optimizer_state=per_mode"],
    ),
    "sasr_ppo2": (
        "SASR, 2 PPO updates per rollout batch",
        [*_SASR, "algorithm.grpo.updates_per_batch=2"],
    ),
    "sasr_ppo4": (
        "SASR, 4 PPO updates per rollout batch",
        [*_SASR, "algorithm.grpo.updates_per_batch=4"],
    ),
    "sasr_dynamic": (
        "SASR, DAPO dynamic sampling of flat groups",
        [*_SASR, "algorithm.grpo.dynamic_sampling=true"],
    ),
    "sasr_all": (
        "SASR, per-mode Adam + 2 PPO updates + dynamic sampling",
        [*_SASR, "learner.optimizer_state=per_mode", "algorithm.grpo.updates_per_batch=2",
         "algorithm.grpo.dynamic_sampling=true"],
    ),  # fmt: skip
    "fixed_ratio_per_mode": (
        "fixed_ratio, one Adam state per mode",
        ["schedule.kind=fixed_ratio", "algorithm.targets=s3ft", "learner.optimizer_state=per_mode"],
    ),
    "sft_then_grpo_per_mode": (
        "sft_then_grpo, one Adam state per mode",
        ["schedule.kind=sft_then_grpo", "algorithm.targets=s3ft", "learner.optimizer_state=per_mode"],
    ),
    "grpo_ppo2": ("GRPO only, 2 PPO updates per rollout batch",
                  ["schedule.kind=grpo", "algorithm.grpo.updates_per_batch=2"]),
    "grpo_dynamic": ("GRPO only, DAPO dynamic sampling",
                     ["schedule.kind=grpo", "algorithm.grpo.dynamic_sampling=true"]),
}  # fmt: skip
DEFAULT_METHODS = (
    "base", "sft_gold", "ssr", "s3ft", "grpo", "sft_then_grpo", "fixed_ratio", "sasr_gold", "sasr",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Cell:
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}"


def parse_list(text: str, what: str, allowed=None) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"--{what}: give at least one, comma-separated")
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise ConfigError(f"--{what}: unknown {', '.join(bad)}; allowed: {', '.join(allowed)}")
    if len(set(items)) < len(items):
        raise ConfigError(f"--{what}: listed twice: {text}")
    return items


def cell_config(config: str | None, overrides: list[str], cell: Cell, out: Path):
    return load_config(
        config,
        [
            *overrides,
            *METHODS[cell.method][1],
            f"trainer.seed={cell.seed}",
            f"trainer.output_dir={out / 'cells' / cell.name}",
        ],
    )


def run_grid(config: str | None, overrides: list[str], methods, seeds, out: Path) -> dict:
    from ray_s3ft.console import Phases
    from ray_s3ft.session import Session
    from ray_s3ft.timing import Timer
    from ray_s3ft.train import train_and_evaluate
    from ray_s3ft.workers.learner import LearnerActor

    base = load_config(config, [*overrides, f"trainer.output_dir={out}"])
    cells = [Cell(m, s) for m in methods if m != "base" for s in seeds]
    # every cell's config is validated before anything starts
    cfgs = {c: cell_config(config, overrides, c, out) for c in cells}
    todo = [c for c in cells if not (out / "cells" / c.name / "summary.json").exists()]
    say(f"compare: {len(cells)} cells ({len(cells) - len(todo)} done) in {out}")
    started = time.perf_counter()
    if not todo and (out / "eval_before.json").exists() and (out / STORE).exists():
        before = json.loads((out / "eval_before.json").read_text())
        store = TargetSet(read_store(out / STORE), "s3ft", computed=0, reused=0)
        return _finish(config, overrides, methods, seeds, out, before, store, started)
    phases = Phases()
    session = phases.run("startup", Session.open, base, True)
    # the grid is a tracked run of its own; each cell a child of it (trainer.loggers)
    group = grid_group(out) if set(base.trainer.loggers) - {"tensorboard"} else None
    grid = Trackers.for_run(base, out, kind="grid", group=group).start()
    status = "FAILED"
    try:
        session.add_drift()
        before = phases.run("eval_before", session.eval_before)
        # one store serves every mode: build it with all rungs (s3ft)
        s3ft = dataclasses.replace(
            base, algorithm=dataclasses.replace(base.algorithm, targets="s3ft")
        )
        store = phases.run("targets", session.build_targets, s3ft)
        for i, cell in enumerate(todo):
            cfg = cfgs[cell]
            cell_dir = Path(cfg.trainer.output_dir)
            cell_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, cell_dir / "config.yaml")
            (cell_dir / "eval_before.json").write_text(json.dumps(before, indent=2) + "\n")
            cell_started = time.perf_counter()
            session.groups.learner.call(
                LearnerActor.reset, cell.seed, cfg.learner, cfg.algorithm.grpo
            )
            targets = dataclasses.replace(store, mode=cfg.algorithm.targets, computed=0)
            trackers = Trackers.for_run(
                cfg, cell_dir, kind="cell", name=cell.name, group=group, parent=grid.ids
            )
            summary = train_and_evaluate(
                session, cfg, cell_dir, targets, before, Timer(), cell_started,
                engine_version=-1, trackers=trackers,
            )  # fmt: skip
            a = summary["accuracy_after"]
            say(
                f"cell {i + 1}/{len(todo)} {cell.name}: task {_pct(a['task']['accuracy'])}, "
                f"held-out {_pct(a['heldout_mean'])} "
                f"({summary['steps']['sft']} SFT / {summary['steps']['grpo']} GRPO steps, "
                f"{summary['wall_s']['total']:.0f} s)"
            )
        results = _finish(config, overrides, methods, seeds, out, before, store, started)
        _track_grid(grid, out, results)
        status = "FINISHED"
        return results
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        grid.finish(status)
        session.close()


def _track_grid(grid, out: Path, results: dict) -> None:
    """The grid's own run: each method's mean figures, results.md / .json, the report."""
    from ray_s3ft.train import draw_report

    for row in results["summary"]:  # mean and std over seeds, by method
        grid.log_eval(row["method"], {k: v for k, v in row.items() if k != "method"}, step=0)
    if not grid.keeps_files():
        return
    draw_report(out, out / "report")
    files = [out / "results.md", out / "results.json", out / "targets.meta.json"]
    grid.log_files([*files, *sorted((out / "report").glob("*"))], base=out)


def _finish(config, overrides, methods, seeds, out: Path, before, store, started) -> dict:
    results = collect(out, methods, seeds, before, store.fractions())
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["command"] = _command(config, overrides, methods, seeds, out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    return results


# ----------------------------------------------------------------------------- aggregation


def _heldout(acc: dict) -> dict[str, float]:
    from ray_s3ft.evaluate import heldout_sets

    return {k: v["accuracy"] for k, v in heldout_sets(acc).items()}


def binomial_se(p: float | None, n: int | None) -> float | None:
    """The standard error of an accuracy ``p`` measured on ``n`` independent questions."""
    if p is None or not n:
        return None
    return math.sqrt(p * (1 - p) / n)


def cell_row(method: str, seed: int, summary: dict | None, before: dict) -> dict:
    """One grid cell's figures; ``base`` is the untrained model (no summary)."""
    from ray_s3ft.evaluate import heldout_sets

    after = before if summary is None else summary["accuracy_after"]
    row = {
        "method": method,
        "seed": seed,
        "task_accuracy": after["task"]["accuracy"],
        "task_gain": after["task"]["accuracy"] - before["task"]["accuracy"],
        "heldout_mean": after["heldout_mean"],
        "heldout_drop": (
            None
            if after["heldout_mean"] is None
            else before["heldout_mean"] - after["heldout_mean"]
        ),
        "heldout": _heldout(after),
        "heldout_n": {k: v.get("n") for k, v in heldout_sets(after).items()},
        "task_n": after["task"].get("n"),
        # mean per-token KL(base || policy) on the base's answers to general prompts (eval.drift)
        "drift_k3": (after.get("drift") or {}).get("k3"),
        "unparsed": after["task"].get("unparsed", 0),
    }
    if summary is not None:
        row.update(
            run_dir=summary["run_dir"],
            targets=summary["targets"],
            sft_steps=summary["steps"]["sft"],
            grpo_steps=summary["steps"]["grpo"],
            wall_s=summary["wall_s"].get("total"),
            # reward per GRPO sample over the run (every sample judged, extra rounds included)
            grpo_reward=(summary.get("grpo") or {}).get("mean_reward"),
        )
    return row


def _mean_std(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None}
    mean = sum(vals) / len(vals)
    # sample std over seeds (n - 1); 0 for a single seed
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var)}


_AGG = (
    "task_accuracy", "task_gain", "heldout_mean", "heldout_drop", "sft_steps", "grpo_steps",
    "wall_s", "grpo_reward", "drift_k3",
)  # fmt: skip


def step_worth(runs: list[tuple[list[dict], dict]], key: str = "eval/task_accuracy") -> list:
    """What an SFT step and a GRPO step were worth, segment by segment of training.

    ``runs``: per cell its ``metrics.jsonl`` rows and its ``eval_before`` scores. Between two
    in-loop evaluations a cell took n_sft SFT and n_grpo GRPO steps and its accuracy moved by
    d; over the cells, least squares without intercept, d = a * n_sft + b * n_grpo, gives a
    and b: accuracy per SFT step and per GRPO step in that segment (the first segment starts
    from the base model's ``eval_before``, on the whole eval set, not the in-loop head). Needs
    cells of different mixes (pure SFT, pure GRPO, hybrids); a segment whose design matrix is
    singular is left out. Returns one dict per segment: start, end (steps), sft, grpo (per
    step), their standard errors and the number of cells."""
    import numpy as np

    base_key = {"eval/task_accuracy": ("task", "accuracy"), "eval/heldout_mean": None}[key]
    segments: dict[tuple[int, int], list[tuple[int, int, float]]] = {}
    for rows, before in runs:
        start = before["heldout_mean"] if base_key is None else before["task"]["accuracy"]
        prev_step, n = 0, {"sft": 0, "grpo": 0}
        for r in rows:
            n[r["mode"]] += 1
            if key in r:
                end = r["step"] + 1
                segments.setdefault((prev_step, end), []).append(
                    (n["sft"], n["grpo"], r[key] - start)
                )
                start, prev_step, n = r[key], end, {"sft": 0, "grpo": 0}
    out = []
    for (lo, hi), obs in sorted(segments.items()):
        X = np.array([[a, b] for a, b, _ in obs], dtype=float)
        y = np.array([d for _, _, d in obs])
        if len(obs) < 3 or np.linalg.matrix_rank(X) < 2:
            continue
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ coef
        dof = len(obs) - 2
        cov = np.linalg.inv(X.T @ X) * (resid @ resid / dof)
        err = np.sqrt(np.diag(cov))
        out.append({"start": lo, "end": hi, "sft": float(coef[0]), "grpo": float(coef[1]),
                    "sft_se": float(err[0]), "grpo_se": float(err[1]), "cells": len(obs)})  # fmt: skip
    return out


def _step_worth_runs(out: Path, cells: list[dict]) -> list:
    runs = []
    for c in cells:
        if c["method"] == "base":
            continue
        d = out / "cells" / f"{c['method']}-s{c['seed']}"
        if not (d / "metrics.jsonl").is_file() or not (d / "eval_before.json").is_file():
            continue
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        runs.append((rows, json.loads((d / "eval_before.json").read_text())))
    return runs


def collect(out: Path, methods, seeds, before: dict, base_targets: dict) -> dict:
    cells, summary = [], []
    for method in methods:
        rows = []
        for seed in [seeds[0]] if method == "base" else seeds:
            path = out / "cells" / f"{method}-s{seed}" / "summary.json"
            if method != "base" and not path.exists():
                continue
            s = None if method == "base" else json.loads(path.read_text())
            rows.append(cell_row(method, seed, s, before))
        cells += rows
        if not rows:
            continue
        agg = {"method": method, "description": METHODS[method][0], "n_seeds": len(rows)}
        agg.update({k: _mean_std([r.get(k) for r in rows]) for k in _AGG})
        names = rows[0]["heldout"].keys()
        agg["heldout"] = {n: _mean_std([r["heldout"][n] for r in rows]) for n in names}
        # the questions' sampling error of each mean accuracy (all seeds' answers pooled)
        agg["task_accuracy"]["se"] = binomial_se(
            agg["task_accuracy"]["mean"], sum(r.get("task_n") or 0 for r in rows)
        )
        for n in names:
            agg["heldout"][n]["se"] = binomial_se(
                agg["heldout"][n]["mean"], sum((r.get("heldout_n") or {}).get(n) or 0 for r in rows)
            )
        if method == "base":
            agg["targets"] = base_targets  # what the store offers (SFT on gold ignores it)
        else:
            agg["targets"] = {
                k: _mean_std([r["targets"][k] for r in rows])["mean"]
                for k in ("self", "paraphrase", "gold")
            }
        summary.append(agg)
    runs = _step_worth_runs(out, cells)
    worth = {k: step_worth(runs, k) for k in ("eval/task_accuracy", "eval/heldout_mean")}
    return {
        "base": before, "seeds": list(seeds), "cells": cells, "summary": summary,
        "step_worth": {"task": worth["eval/task_accuracy"], "heldout": worth["eval/heldout_mean"]},
    }  # fmt: skip


def _pct(x, std=None) -> str:
    if x is None:
        return "-"
    text = f"{100 * x:.1f}"
    return text + (f" ± {100 * std:.1f}" if std is not None else "") + " %"


def _pct_se(ms: dict) -> str:
    if ms.get("mean") is None:
        return "-"
    se = ms.get("se")
    return f"{100 * ms['mean']:.1f}" + ("" if se is None else f" ± {100 * se:.1f}") + " %"


def _pts(ms: dict) -> str:
    if ms["mean"] is None:
        return "-"
    return f"{100 * ms['mean']:+.1f} ± {100 * ms['std']:.1f}"


def results_markdown(r: dict) -> str:
    lines = [
        "# ray-s3ft compare",
        "",
        f"Seeds {', '.join(map(str, r['seeds']))}; mean ± std over seeds (sample std). "
        "Held-out drop = base held-out mean minus the method's, in points (positive = forgot).",
        "",
        "| method | task accuracy | task gain (pts) | held-out mean | held-out drop (pts) "
        "| self / para / gold % | SFT / GRPO steps | GRPO reward | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in r["summary"]:
        t = a["targets"]
        src = " / ".join(f"{100 * t[k]:.1f}" for k in ("self", "paraphrase", "gold"))
        if a["method"] == "base":
            src = f"({src})"
        steps = (
            "-"
            if a["sft_steps"]["mean"] is None
            else f"{a['sft_steps']['mean']:.1f} / {a['grpo_steps']['mean']:.1f}"
        )
        wall = "-" if a["wall_s"]["mean"] is None else f"{a['wall_s']['mean']:.0f}"
        reward = (a.get("grpo_reward") or {}).get("mean")
        reward = "-" if reward is None else f"{reward:.3f}"
        lines.append(
            f"| {a['method']} | {_pct(a['task_accuracy']['mean'], a['task_accuracy']['std'])} "
            f"| {_pts(a['task_gain'])} "
            f"| {_pct(a['heldout_mean']['mean'], a['heldout_mean']['std'])} "
            f"| {_pts(a['heldout_drop'])} | {src} | {steps} | {reward} | {wall} |"
        )
    names = list(r["summary"][0]["heldout"]) if r["summary"] else []
    if names:
        lines += [
            "",
            "Held-out sets (mean over seeds ± the questions' standard error, all seeds' answers "
            "pooled; drift: mean per-token KL(base || policy), k3, on the base model's answers "
            "to general prompts, nats/token):",
            "",
            "| method | task | " + " | ".join(names) + " | drift |",
            "| --- | --- |" + " --- |" * len(names) + " --- |",
        ]
        for a in r["summary"]:
            cols = " | ".join(_pct_se(a["heldout"][n]) for n in names)
            k3 = (a.get("drift_k3") or {}).get("mean")
            drift = "-" if k3 is None else f"{k3:.4f}"
            lines.append(f"| {a['method']} | {_pct_se(a['task_accuracy'])} | {cols} | {drift} |")
    worth = r.get("step_worth") or {}
    if worth.get("task"):
        lines += [
            "",
            "What one step was worth, per segment of training (points of accuracy per step, "
            "least squares over every cell: change = a * SFT steps + b * GRPO steps; ± standard "
            "error; the first segment starts from the base model on the whole eval set):",
            "",
            "| steps | task: SFT step | task: GRPO step | held-out: SFT step | held-out: GRPO step "
            "| cells |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        held = {(h["start"], h["end"]): h for h in worth.get("heldout", [])}
        for t in worth["task"]:
            h = held.get((t["start"], t["end"]))

            def pts(x, key):
                return "-" if x is None else f"{100 * x[key]:+.3f} ± {100 * x[key + '_se']:.3f}"

            lines.append(
                f"| {t['start']}-{t['end']} | {pts(t, 'sft')} | {pts(t, 'grpo')} "
                f"| {pts(h, 'sft')} | {pts(h, 'grpo')} | {t['cells']} |"
            )
    lines += ["", "Methods:", ""]
    lines += [f"- `{a['method']}`: {a['description']}" for a in r["summary"]]
    if r.get("command"):
        lines += ["", "Command:", "", "```", r["command"], "```"]
    return "\n".join(lines) + "\n"


def _command(config, overrides, methods, seeds, out) -> str:
    parts = ["ray-s3ft compare"]
    if config:
        parts.append(f"--config {config}")
    parts += [f"--methods {','.join(methods)}", f"--seeds {','.join(map(str, seeds))}"]
    parts.append(f"--out {out}")
    return " ".join(parts + list(overrides))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ray-s3ft compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", metavar="FILE", help="YAML config (default: the built-in run)")
    ap.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from: {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})",
    )
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated integers (default: 0,1,2)")
    ap.add_argument("--out", default="runs/compare", help="grid directory (default: runs/compare)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every cell")
    args = ap.parse_args(argv)
    methods = parse_list(args.methods, "methods", METHODS)
    try:
        seeds = [int(s) for s in parse_list(args.seeds, "seeds")]
    except ValueError:
        raise ConfigError(
            f"--seeds: expected comma-separated integers, got {args.seeds!r}"
        ) from None
    out = Path(args.out)
    results = run_grid(args.config, args.overrides, methods, seeds, out)
    print(results_markdown(results))
    print(f"saved {out / 'results.md'} and {out / 'results.json'}")
    return 0
