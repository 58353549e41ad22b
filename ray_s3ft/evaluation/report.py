"""``ray-s3ft report``: figures and a markdown summary of one or more runs.

Reads each run's ``metrics.jsonl``, ``summary.json`` and ``config.yaml`` and writes, under
``--out`` (default: the run directory when given exactly one, else ``./report``):

    report.md         the trade-off figure first; per run: accuracy before -> after, held-out
                      drop, target fractions, steps, wall time; with several runs a comparison
                      table; then the figures
    tradeoff.png      task gain against held-out drop (``evaluation.tradeoff``), the Pareto
                      front marked: one point per method of a grid (from its results.json),
                      per run otherwise; with one run alone, not drawn
    accuracy.png      task accuracy and held-out mean over steps (in-loop evals, before / after)
    loss_reward.png   learner loss (SFT and GRPO steps apart) and the mean GRPO reward
    schedule.png      SASR's p_sft per step, the mode drawn, the cumulative share of SFT steps
    gate_signals.png  the SFT grad norm G_t against G_warm, and the KL to the reference
    targets.png       self / paraphrase / gold target fractions per run
    targets_over_time.png  the self and gold shares step by step, for runs whose targets
                      followed the policy (skipped otherwise)

A figure without data is skipped and report.md says so. A ``ray-s3ft compare`` grid directory
(``results.json`` + ``cells/``) stands for its cells. A run that has not finished (no
``summary.json``) is reported from its metrics alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROG = "ray-s3ft report"
SOURCES = (("self", "self"), ("paraphrase", "para"), ("gold", "gold"))  # summary key, metric key
COLUMNS = "run|task before|task after|held-out before|held-out after|held-out drop (points)|"
COLUMNS += "self / para / gold %|SFT steps|GRPO steps|wall s"


class ReportError(Exception):
    pass


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # absent: reported as missing
        return ""


def _parse(text: str, parse) -> dict:
    try:
        value = parse(text)
    except Exception:  # empty, or cut short by a crash: reported as missing
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class Run:
    name: str
    path: Path
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # empty: the run has not finished
    config: dict = field(default_factory=dict)
    method: str | None = None  # from a compare grid's results.json

    def series(self, key: str, mode: str | None = None) -> tuple[list[int], list[float]]:
        """(steps, values) of the rows where ``key`` is a finite number (and the mode matches)."""
        xs, ys = [], []
        for i, row in enumerate(self.rows):
            v, step = row.get(key), row.get("step", i)
            if (mode is None or row.get("mode") == mode) and _num(v) and _num(step):
                xs.append(int(step))
                ys.append(float(v))
        return xs, ys

    def last(self, key: str) -> float | None:
        return (self.series(key)[1] or [None])[-1]

    def acc(self, when: str, name: str) -> float | None:
        """Accuracy ``when`` ("before" / "after") of ``name`` ("task", a held-out set, "mean")."""
        ev = self.summary.get(f"accuracy_{when}") or {}
        v = ev.get("heldout_mean") if name == "mean" else (ev.get(name) or {}).get("accuracy")
        return float(v) if _num(v) else None

    def heldout_names(self) -> list[str]:
        from ray_s3ft.evaluation.scoring import heldout_sets

        return list(heldout_sets(self.summary.get("accuracy_before") or {}))

    def targets(self) -> list[float | None]:
        t = self.summary.get("targets") or {}
        return [t[s] if _num(t.get(s)) else self.last(f"targets/{k}_frac") for s, k in SOURCES]

    def steps(self) -> list[int]:
        s, modes = self.summary.get("steps") or {}, [r.get("mode") for r in self.rows]
        return [s[m] if _num(s.get(m)) else modes.count(m) for m in ("sft", "grpo")]

    def modes(self) -> list[tuple[int, str]]:
        return [
            (int(r.get("step", i)), r["mode"])
            for i, r in enumerate(self.rows)
            if r.get("mode") in ("sft", "grpo", "mix") and _num(r.get("step", i))
        ]


def load_run(path: Path, method: str | None = None) -> Run:
    import yaml

    lines = _text(path / "metrics.jsonl").splitlines()
    rows = [row for line in lines if (row := _parse(line, json.loads))]
    summary = _parse(_text(path / "summary.json"), json.loads)
    config = _parse(_text(path / "config.yaml"), yaml.safe_load)
    return Run(path.name, path, rows, summary, config, method)


def expand(path: Path) -> list[Run]:
    """The runs of one argument: a run directory, or a compare grid's cells (sorted); none for
    a grid shipped without its cells (its ``results.json`` still gives the trade-off)."""
    if (path / "metrics.jsonl").is_file():
        return [load_run(path)]
    if not (path / "results.json").is_file():
        raise ReportError(f"{path}: not a run directory (no metrics.jsonl or results.json)")
    results = _parse(_text(path / "results.json"), json.loads)
    if not (path / "cells").is_dir() and results.get("summary"):
        return []
    cells = results.get("cells")
    cells = [c for c in cells if isinstance(c, dict)] if isinstance(cells, list) else []
    methods = {Path(str(c.get("run_dir"))).name: c.get("method") for c in cells}
    dirs = [d for d in sorted((path / "cells").glob("*")) if (d / "metrics.jsonl").is_file()]
    if not dirs:
        raise ReportError(f"{path}: no run directories in {path / 'cells'}")
    return [load_run(d, methods.get(d.name)) for d in dirs]


# ---- report.md ----------------------------------------------------------------------------


def _pct(x: float | None, unit: str = " %") -> str:
    return "-" if x is None else f"{100 * x:.1f}{unit}"


def _arrow(run: Run, name: str) -> str:
    return f"{_pct(run.acc('before', name))} -> {_pct(run.acc('after', name))}"


def _drop(run: Run) -> str:
    b, a = run.acc("before", "mean"), run.acc("after", "mean")
    return "-" if b is None or a is None else f"{100 * (b - a):.1f}"


def _targets(run: Run) -> str:
    return " / ".join(_pct(f, "") for f in run.targets())


def _wall(run: Run) -> str:
    w = (run.summary.get("wall_s") or {}).get("total")
    return f"{w:.1f}" if _num(w) else "-"


def _describe(run: Run) -> str:
    cfg = {k: v for k, v in run.config.items() if isinstance(v, dict)}
    got = [
        ("method", run.method),
        ("schedule", cfg.get("schedule", {}).get("kind")),
        ("targets", cfg.get("algorithm", {}).get("targets")),
        ("seed", cfg.get("trainer", {}).get("seed")),
    ]
    return ", ".join(f"{k} {v}" for k, v in got if v is not None)


def run_section(run: Run) -> list[str]:
    sft, grpo = run.steps()
    lines = [f"## {run.name}", "", f"`{run.path}`" + (f" ({d})" if (d := _describe(run)) else "")]
    if not run.summary:
        lines += ["", "*No summary.json (not finished): steps and targets from metrics.jsonl.*"]
    lines += ["", "| | |", "|---|---|", f"| task accuracy | {_arrow(run, 'task')} |"]
    lines += [f"| held-out: {n} | {_arrow(run, n)} |" for n in run.heldout_names()]
    wall = _wall(run)
    return lines + [
        f"| held-out mean | {_arrow(run, 'mean')} |",
        f"| held-out drop (points) | {_drop(run)} |",
        f"| targets self / para / gold | {_targets(run)} % |",
        f"| steps SFT / GRPO | {sft} / {grpo} |",
        f"| wall time | {wall}{' s' if wall != '-' else ''} |",
        "",
    ]


def comparison(runs: list[Run]) -> list[str]:
    lines = ["## Comparison", "", f"| {COLUMNS.replace('|', ' | ')} |", "|---" * 10 + "|"]
    for r in runs:
        cells = [
            r.name,
            *(_pct(r.acc(w, k)) for k in ("task", "mean") for w in ("before", "after")),
        ]
        cells += [_drop(r), _targets(r), *map(str, r.steps()), _wall(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


# ---- figures: each draws on its axes and returns whether any run had data -----------------


def _styles(runs: list[Run]) -> list[dict]:
    """Colour by method (else run name); runs sharing a colour differ by line style."""
    from matplotlib import colormaps

    keys = [r.method or r.name for r in runs]
    colours = {k: colormaps["tab10"](i % 10) for i, k in enumerate(dict.fromkeys(keys))}
    dashes = ("-", "--", ":", "-.")
    return [{"color": colours[k], "ls": dashes[keys[:i].count(k) % 4]} for i, k in enumerate(keys)]


MANY_RUNS = 6  # more runs than this (a grid's cells): one legend of the runs, beside the figure


def _run_handles(runs, styles) -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], label=r.name, **st) for r, st in zip(runs, styles)]


def _key(ax, marks, runs, styles) -> None:
    """A legend of what the markers mean, and of the runs when there are several (a few: in
    the panel; many: the figure's legend holds them)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="k", marker=m, ls="none", label=k) for m, k in marks]
    if 1 < len(runs) <= MANY_RUNS:
        handles += _run_handles(runs, styles)
    ax.legend(handles=handles, fontsize="small")


def plot_accuracy(runs, styles, ax) -> bool:
    drawn = False
    for run, st in zip(runs, styles):
        for a, name in zip(ax, ("task", "mean")):
            xs, ys = run.series("eval/task_accuracy" if name == "task" else "eval/heldout_mean")
            before, after = run.acc("before", name), run.acc("after", name)
            end = max([*xs, *(s for s, _ in run.modes()), sum(run.steps()) - 1, 0])
            if before is not None:
                xs, ys = [0, *xs], [before, *ys]
            if after is not None and len(xs) < 2:  # no in-loop evals: join before and after
                xs, ys = [*xs, end], [*ys, after]
            if xs:
                a.plot(xs, [100 * y for y in ys], marker="o", label=run.name, **st)
                drawn = True
            if after is not None:  # the final evaluation, apart from the in-loop ones
                a.plot([end], [100 * after], marker="*", ms=14, color=st["color"], ls="none")
    for a, what in zip(ax, ("task", "held-out mean")):
        a.set(xlabel="training step", ylabel=f"{what} accuracy (%)", title=what)
    _key(ax[0], [("o", "before / in-loop eval"), ("*", "final eval")], runs, styles)
    return drawn


def plot_loss_reward(runs, styles, ax) -> bool:
    drawn = rewards = False
    for run, st in zip(runs, styles):
        for mode, marker in (("sft", "o"), ("grpo", "x")):
            xs, ys = run.series("learner/loss", mode)
            ax[0].scatter(xs, ys, marker=marker, color=st["color"], s=24)
            drawn |= bool(xs)
        xs, ys = run.series("reward/mean", "grpo") if run.modes() else run.series("reward/mean")
        if xs:
            ax[1].plot(xs, ys, marker=".", label=run.name, **st)
            rewards = True
        drawn |= bool(xs)
    _key(ax[0], [("o", "SFT step"), ("x", "GRPO step")], runs, styles)
    ax[0].set(xlabel="training step", ylabel="loss (SFT: NLL, nats/token; GRPO: surrogate)")
    ax[1].set(xlabel="training step", ylabel="mean reward on GRPO steps (0-1)")
    if not rewards:  # SFT-only runs: say so instead of an empty frame
        ax[1].text(0.5, 0.5, "no GRPO steps in these runs", ha="center", va="center",
                   transform=ax[1].transAxes, color="grey")  # fmt: skip
        ax[1].set(xticks=[], yticks=[])
        ax[1].legend([], frameon=False)  # keeps the caller from adding an empty legend
    return drawn


def plot_schedule(runs, styles, ax) -> bool:
    drawn, n = False, len(runs)
    for i, (run, st) in enumerate(zip(runs, styles)):
        xs, ys = run.series("sasr/p_sft")
        ax[0].plot(xs, ys, label=run.name, **st)
        steps = run.modes()
        for mode, y in (("sft", 1.07 + 0.06 * i), ("grpo", -0.07 - 0.06 * i)):
            picked = [s for s, m in steps if m == mode]
            ax[0].scatter(picked, [y] * len(picked), marker="|", color=st["color"], s=60)
        mu = dict(zip(xs, ys, strict=False))  # a mix step counts as its SFT weight mu
        sft = [1.0 if m == "sft" else mu.get(s, 0.0) if m == "mix" else 0.0 for s, m in steps]
        share = [100 * sum(sft[: k + 1]) / (k + 1) for k in range(len(sft))]
        ax[1].plot([s for s, _ in steps], share, label=run.name, **st)
        drawn |= bool(xs or steps)
    top, mid = 1.07 + 0.06 * n, 1.07 + 0.06 * (n - 1) / 2
    ax[0].axhspan(1.0, top, color="tab:blue", alpha=0.07)
    ax[0].axhspan(-top + 1, 0.0, color="tab:orange", alpha=0.07)
    ticks = [1 - mid, 0, 0.25, 0.5, 0.75, 1, mid]
    ax[0].set_yticks(ticks, ["GRPO", "0", "0.25", "0.5", "0.75", "1", "SFT"])
    ax[0].set(
        xlabel="training step", ylabel="p_sft (probability of SFT; mix: mu)", ylim=(1 - top, top)
    )
    ax[1].set(xlabel="training step", ylabel="cumulative share of SFT (%; mix: mu)", ylim=(-3, 103))
    return drawn


def plot_gate(runs, styles, ax) -> bool:
    drawn = False
    for run, st in zip(runs, styles):
        xs, ys = run.series("sasr/grad_norm")
        ax[0].plot(xs, ys, label=run.name, **st)
        if (warm := run.last("sasr/grad_norm_warm")) is not None:
            ax[0].axhline(warm, color=st["color"], ls="--", lw=1, alpha=0.7)
        kx, ky = run.series("learner/kl")
        ax[1].plot(kx, ky, marker=".", label=run.name, **st)
        drawn |= bool(xs or kx)
    ax[0].set(xlabel="training step", ylabel="SFT grad norm G_t (L2)", title="dashed: G_warm")
    ax[1].set(xlabel="training step", ylabel="KL to reference (nats/token)")
    if drawn:  # one diverging step can be 100x the rest: keep the rest readable
        ax[1].set_yscale("symlog", linthresh=0.01)
    return drawn


def plot_targets(runs, styles, ax) -> bool:
    fracs = [[100 * (f or 0.0) for f in r.targets()] for r in runs]
    bottom = [0.0] * len(runs)
    for k, colour in enumerate(("tab:green", "tab:purple", "tab:gray")):
        vals = [f[k] for f in fracs]
        bars = ax[0].bar(range(len(runs)), vals, bottom=bottom, color=colour, label=SOURCES[k][0])
        ax[0].bar_label(bars, [f"{v:.1f}" if v >= 6 else "" for v in vals], label_type="center")
        bottom = [b + v for b, v in zip(bottom, vals)]
    tilt = {"rotation": 20, "ha": "right"} if len(runs) > 3 else {}
    ax[0].set_xticks(range(len(runs)), [r.name for r in runs], **tilt)
    ax[0].set(ylabel="share of SFT targets (%)", ylim=(0, 100))
    ax[0].legend(title="target source", fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    return any(f is not None for r in runs for f in r.targets())


def plot_targets_over_time(runs, styles, ax) -> bool:
    """The self and gold shares of the SFT targets step by step, for runs whose split moved
    (``algorithm.targets_refresh_every``, ``rehearse_rollouts``)."""
    drawn = False
    for run, st in zip(runs, styles):
        xs, selfs = run.series("targets/self_frac")
        gx, golds = run.series("targets/gold_frac")
        if len(set(selfs)) < 2 and len(set(golds)) < 2:
            continue  # the store's split throughout
        ax[0].plot(xs, [100 * v for v in selfs], label=run.name, **st)
        ax[1].plot(gx, [100 * v for v in golds], label=run.name, **st)
        drawn = True
    ax[0].set(xlabel="training step", ylabel="self targets (%)", ylim=(-3, 103))
    ax[1].set(xlabel="training step", ylabel="gold targets (%)", ylim=(-3, 103))
    return drawn


def _run_point(run: Run):
    """A run's task gain and held-out drop in points, from its summary (None if unfinished)."""
    from ray_s3ft.evaluation.tradeoff import Point

    acc = [run.acc(w, k) for k in ("task", "mean") for w in ("before", "after")]
    if None in acc:
        return None
    task_before, task_after, held_before, held_after = acc
    return Point(run.name, 100 * (held_before - held_after), 100 * (task_after - task_before))


def tradeoff(groups: list[tuple[Path, list[Run]]], out: Path) -> list[str]:
    """``out/tradeoff.png`` and its markdown: a grid's methods from its ``results.json``
    (prefixed by the grid's name when there are several arguments), other runs one point
    each; nothing for one run alone."""
    from ray_s3ft.evaluation import tradeoff as t

    grids = [d for d, _ in groups if not (d / "metrics.jsonl").is_file()]
    if not grids and sum(len(runs) for _, runs in groups) < 2:
        return []
    points, kinds = [t.base_point()], set()
    for d, runs in groups:
        results = _parse(_text(d / "results.json"), json.loads) if d in grids else {}
        got = t.grid_points(results, f"{d.name}/" if len(groups) > 1 else "")
        kind = "method (mean over its seeds)"
        if not got:  # a run, or a grid whose results.json has no summary yet
            got, kind = [p for r in runs if (p := _run_point(r)) is not None], "run"
        kinds |= {kind} if got else set()
        points += got
    path = out / "tradeoff.png"
    if len(points) < 2:
        path.unlink(missing_ok=True)
        return ["*tradeoff.png skipped: no task and held-out accuracy before and after.*", ""]
    front = t.draw(points, path, "Task gain against held-out drop")
    what = " or ".join(sorted(kinds))  # "method (...)" before "run"
    text = t.caption([p.name for p in front], t.errors_text(points), what)
    return ["![tradeoff](tradeoff.png)", "", text, ""]


FIGURES = (  # file stem, plot, figure title, why it is skipped
    ("accuracy", plot_accuracy, "Accuracy over training", "no in-loop evals and no summary.json"),
    ("loss_reward", plot_loss_reward, "Learner loss and GRPO reward", "no loss or reward values"),
    ("schedule", plot_schedule, "SASR schedule: p_sft and the mode drawn", "no p_sft or modes"),
    ("gate_signals", plot_gate, "SASR gate signals", "no sasr/grad_norm or learner/kl values"),
    ("targets", plot_targets, "S3FT target sources per run", "no target fractions"),
    ("targets_over_time", plot_targets_over_time, "SFT targets that follow the policy",
     "no run's target split moved (algorithm.targets_refresh_every, rehearse_rollouts off)"),
)  # fmt: skip


def write_report(run_dirs: list[Path], out: Path) -> Path:
    """Load every run (grid directories expanded), draw the figures, write ``out/report.md``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(Path(d), expand(Path(d))) for d in run_dirs]
    runs = [run for _, grid in groups for run in grid]
    names = [r.name for r in runs]
    for r in runs:  # two grids with the same cell names: say which grid
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.parent.name}/{r.path.name}"
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# ray-s3ft report", "", f"{len(runs)} run(s).", "", *tradeoff(groups, out)]
    for run in runs:
        lines += run_section(run)
    lines += (comparison(runs) if len(runs) > 1 else []) + ["## Figures", ""]
    styles = _styles(runs)
    for stem, plot, title, missing in FIGURES:
        path, wide = out / f"{stem}.png", stem != "targets"
        size = (12, 4.5) if wide else (min(2.2 * len(runs) + 4.5, 16), 4.5)  # a grid: capped
        fig, ax = plt.subplots(1, 2 if wide else 1, figsize=size, squeeze=False)
        if plot(runs, styles, list(ax[0])):
            fig.suptitle(title)
            for a in ax[0]:
                a.grid(alpha=0.3)
                a.set_axisbelow(True)
                if 1 < len(runs) <= MANY_RUNS and a.get_legend() is None:
                    a.legend(fontsize="small")
            fig.tight_layout()
            if len(runs) > MANY_RUNS and wide:
                fig.legend(handles=_run_handles(runs, styles), fontsize="small",
                           loc="center left", bbox_to_anchor=(1.0, 0.5))  # fmt: skip
            fig.savefig(path, dpi=110, bbox_inches="tight")
            lines += [f"![{stem}]({stem}.png)", ""]
        else:
            path.unlink(missing_ok=True)  # no stale figure from an earlier report
            lines += [f"*{stem}.png skipped: {missing}.*", ""]
        plt.close(fig)
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Figures and a markdown summary of runs.")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run or grid dir")
    p.add_argument("--out", type=Path, help="default: the run directory if one, else ./report")
    args = p.parse_args(argv)
    single = len(args.run_dirs) == 1 and (args.run_dirs[0] / "metrics.jsonl").is_file()
    out = args.out or (args.run_dirs[0] if single else Path("report"))
    try:
        report = write_report(args.run_dirs, out)
    except ReportError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {report}")
    return 0
