"""A grid's results: one row per cell from its ``summary.json``, mean / std per method over
seeds, the questions' standard errors and the claims' paired differences (``questions``), what
a step of each mode was worth per stretch of training (``step_worth``), and the Markdown
tables of ``results.md``."""

from __future__ import annotations

import json
from pathlib import Path

from ray_s3ft.experiments.methods import METHODS
from ray_s3ft.experiments.stats import sample_std


def _heldout(acc: dict) -> dict[str, float]:
    from ray_s3ft.evaluation.scoring import heldout_sets

    return {k: v["accuracy"] for k, v in heldout_sets(acc).items()}


def cell_row(method: str, seed: int, summary: dict | None, before: dict) -> dict:
    """One grid cell's figures; ``base`` is the untrained model (no summary)."""
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
            mix_steps=summary["steps"].get("mix", 0),  # schedule.kind mix / sasr_soft
            # under a forgetting budget (guard.*): the weights evaluated, final / best / base
            guard_weights=((summary.get("guard") or {}).get("chosen") or {}).get("weights"),
            wall_s=summary["wall_s"].get("total"),
            # reward per GRPO sample over the run (every sample judged, extra rounds included)
            grpo_reward=(summary.get("grpo") or {}).get("mean_reward"),
        )
    return row


def _mean_std(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None}
    # sample std over seeds (n - 1); 0 for a single seed
    return {"mean": sum(vals) / len(vals), "std": sample_std(vals)}


_AGG = (
    "task_accuracy", "task_gain", "heldout_mean", "heldout_drop", "sft_steps", "grpo_steps",
    "mix_steps", "wall_s", "grpo_reward", "drift_k3",
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


def _vs_base(summary: list[dict], items: dict, base_items) -> None:
    """Each method's paired difference to the base model on the same questions (task, each
    held-out set, held-out mean; ``questions.paired``) as ``vs_base``, where both kept their
    verdicts: the error bars of the trade-off figure (``evaluation.tradeoff``)."""
    from ray_s3ft.experiments.questions import paired

    for agg in summary:
        if agg["method"] != "base" and base_items and items.get(agg["method"]):
            agg["vs_base"] = paired(items[agg["method"]], base_items, list(agg["heldout"]))


def collect(out: Path, methods, seeds, before: dict, base_targets: dict, pairs=()) -> dict:
    """Every finished cell's row, each method's means and spreads over seeds with the
    questions' standard errors (``questions.set_errors``), and the paired differences of the
    claims and of ``pairs`` (``(a, b)`` method names; ``questions.claims``), and each
    method's paired difference to the base model (``vs_base``, where verdicts were kept)."""
    from ray_s3ft.experiments.questions import NO_ITEMS, claims, method_items, set_errors

    cells, summary, items = [], [], {}
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
        # the questions' sampling error of each seed-mean accuracy, from each question's
        # verdicts (every seed answers the same questions: pooling them is no more questions)
        items[method] = method_items(out, method, [r["seed"] for r in rows])
        errors = set_errors(items[method], ["task", *names])
        for key, ms in [("task", agg["task_accuracy"]), *((n, agg["heldout"][n]) for n in names)]:
            ms["se"] = (errors.get(key) or {}).get("se")
            ms["questions"] = (errors.get(key) or {}).get("n")
            if key not in errors:
                ms["se_note"] = NO_ITEMS
        if method == "base":
            agg["targets"] = base_targets  # what the store offers (SFT on gold ignores it)
        else:
            agg["targets"] = {
                k: _mean_std([r["targets"][k] for r in rows])["mean"]
                for k in ("self", "paraphrase", "gold")
            }
        summary.append(agg)
    _vs_base(summary, items, method_items(out, "base", [seeds[0]]))
    runs = _step_worth_runs(out, cells)
    worth = {k: step_worth(runs, k) for k in ("eval/task_accuracy", "eval/heldout_mean")}
    return {
        "base": before, "seeds": list(seeds), "cells": cells, "summary": summary,
        "paired": claims(summary, items, pairs),
        "step_worth": {"task": worth["eval/task_accuracy"], "heldout": worth["eval/heldout_mean"]},
    }  # fmt: skip


def within_budget(summary: list[dict], max_drop: float | None, max_drift: float | None) -> dict:
    """Best-within-budget selection over the grid's methods (``guard.*`` of its config): the
    methods whose mean held-out drop (points) and mean drift are within the budget, and among
    them the one with the highest mean task accuracy (a method without the measure a budget
    needs is not within it)."""
    within = []
    for a in summary:
        drop, drift = a["heldout_drop"]["mean"], a["drift_k3"]["mean"]
        ok_drop = max_drop is None or (drop is not None and 100 * drop <= max_drop)
        ok_drift = max_drift is None or (drift is not None and drift <= max_drift)
        if ok_drop and ok_drift:
            within.append(a)
    best = max(within, key=lambda a: a["task_accuracy"]["mean"], default=None)
    return {
        "max_heldout_drop": max_drop, "max_drift": max_drift,
        "within": [a["method"] for a in within],
        "best": None if best is None else best["method"],
        "best_task_accuracy": None if best is None else best["task_accuracy"]["mean"],
    }  # fmt: skip


def _budget_markdown(b: dict) -> list[str]:
    limits = [f"held-out drop <= {b['max_heldout_drop']:g} points"] * (
        b["max_heldout_drop"] is not None
    ) + [f"drift <= {b['max_drift']:g} nats/token"] * (b["max_drift"] is not None)
    best = (
        "no method is within it"
        if b["best"] is None
        else f"the best within it is **{b['best']}** (task {pct(b['best_task_accuracy'])}); "
        f"within: {', '.join(b['within'])}"
    )
    return [f"Forgetting budget ({', '.join(limits)}, means over seeds): {best}.", ""]


def pct(x, std=None) -> str:
    if x is None:
        return "-"
    text = f"{100 * x:.1f}"
    return text + (f" ± {100 * std:.1f}" if std is not None else "") + " %"


def _pct_se(ms: dict) -> str:
    if ms.get("mean") is None:
        return "-"
    se = ms.get("se")
    if se is None:
        return f"{100 * ms['mean']:.1f} % ± {ms.get('se_note', 'n/a')}"
    return f"{100 * ms['mean']:.1f} ± {100 * se:.1f} %"


def _diff(d: dict | None) -> str:
    if not d or d.get("diff") is None:
        return "-"
    se = "n/a" if d.get("se") is None else f"{100 * d['se']:.1f}"
    return f"{100 * d['diff']:+.1f} ± {se}"


def _paired_markdown(rows: list[dict], names: list[str]) -> list[str]:
    lines = [
        "",
        "Paired differences of the claims and the pairs asked for (method A minus method B on the same questions, in "
        "points: per question the mean verdict over each method's seeds, A minus B, then the "
        "mean over questions ± its standard error by a paired bootstrap over questions, 2000 "
        "resamples, seed 0; held-out mean: the sets' mean, their errors combined as "
        "independent):",
        "",
        "| A - B | questions | task | held-out mean | " + " | ".join(names) + " |",
        "| --- | --- | --- | --- |" + " --- |" * len(names),
    ]
    for p in rows:
        if "note" in p:
            lines.append(f"| {p['claim']} | {p['note']} |" + " |" * (len(names) + 2))
            continue
        cols = " | ".join(_diff(p["heldout"].get(n)) for n in names)
        lines.append(
            f"| {p['claim']} | {p['task']['n']} | {_diff(p['task'])} "
            f"| {_diff(p['heldout_mean'])} | {cols} |"
        )
    return lines


def _pts(ms: dict) -> str:
    if ms["mean"] is None:
        return "-"
    return f"{100 * ms['mean']:+.1f} ± {100 * ms['std']:.1f}"


def tradeoff_markdown(t: dict) -> list[str]:
    """The trade-off figure and its caption (``evaluation.tradeoff.write_grid``'s record)."""
    from ray_s3ft.evaluation.tradeoff import caption

    return [f"![tradeoff]({t['figure']})", "", caption(t["front"], t["errors"]), ""]


def results_markdown(r: dict) -> str:
    lines = [
        "# ray-s3ft compare",
        "",
        *(tradeoff_markdown(r["tradeoff"]) if r.get("tradeoff") else []),
        *(_budget_markdown(r["budget"]) if r.get("budget") else []),
        f"Seeds {', '.join(map(str, r['seeds']))}; mean ± std over a method's finished seeds "
        "(sample std; 0 for one seed). "
        "Held-out drop = base held-out mean minus the method's, in points (positive = forgot).",
        "",
        "| method | seeds | task accuracy | task gain (pts) | held-out mean | held-out drop (pts) "
        "| self / para / gold % | SFT / GRPO steps | GRPO reward | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
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
        if ((a.get("mix_steps") or {}).get("mean") or 0) > 0:  # one-step mixes
            steps += f" + {a['mix_steps']['mean']:.1f} mix"
        wall = "-" if a["wall_s"]["mean"] is None else f"{a['wall_s']['mean']:.0f}"
        reward = (a.get("grpo_reward") or {}).get("mean")
        reward = "-" if reward is None else f"{reward:.3f}"
        lines.append(
            f"| {a['method']} | {a['n_seeds']} "
            f"| {pct(a['task_accuracy']['mean'], a['task_accuracy']['std'])} "
            f"| {_pts(a['task_gain'])} "
            f"| {pct(a['heldout_mean']['mean'], a['heldout_mean']['std'])} "
            f"| {_pts(a['heldout_drop'])} | {src} | {steps} | {reward} | {wall} |"
        )
    names = list(r["summary"][0]["heldout"]) if r["summary"] else []
    if names:
        lines += [
            "",
            "Held-out sets (mean over seeds ± the questions' standard error of that mean: per "
            "question the mean verdict over the seeds, then the standard error of the mean over "
            "the questions, which more seeds do not shrink; drift: mean per-token "
            "KL(base || policy), k3, on the base model's answers to general prompts, "
            "nats/token):",
            "",
            "| method | task | " + " | ".join(names) + " | drift |",
            "| --- | --- |" + " --- |" * len(names) + " --- |",
        ]
        for a in r["summary"]:
            cols = " | ".join(_pct_se(a["heldout"][n]) for n in names)
            k3 = (a.get("drift_k3") or {}).get("mean")
            drift = "-" if k3 is None else f"{k3:.4f}"
            lines.append(f"| {a['method']} | {_pct_se(a['task_accuracy'])} | {cols} | {drift} |")
    if r.get("paired"):
        lines += _paired_markdown(r["paired"], names)
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
