"""``ray-s3ft compare``: a grid of methods x seeds at the same budget, on one set of actors.

    ray-s3ft compare --config FILE --methods sft_gold,s3ft,sasr --seeds 0,1,2 [key=value ...]

Every cell trains from the base model with the same data, steps, learning rate and evaluation;
only the method's own settings (schedule kind, SFT targets, gate options) and the seed change.
The Ray cluster, the rollout engines, the judges and the learner ranks are started once: between
cells the learners reset to the base weights (fresh optimizer and KL reference) and the engines
get the base weights with the next sync. The base model is evaluated once and the S3FT target
store is built once; every cell reads the rung its method asks for from that store (``sdft``
cells from a second store in ``OUT/sdft``, built once too: SDFT paraphrases every gold).

A finished cell (its ``summary.json`` exists) is skipped, so an interrupted grid resumes where
it stopped; a cell cut short resumes from its last checkpoint. Both only while the cell's
fingerprint (``cells/<cell>/fingerprint.json``: its resolved config and the model's identity)
matches this command's, and likewise ``eval_before.json`` and the target store: a mismatch
stops the grid naming the keys that differ, and ``--force`` redoes what differs. ``--gather``
trains nothing and writes the tables of the finished cells (methods may then have different
numbers of seeds). Results:

    OUT/results.json   every cell, mean / std per method over seeds, the questions' standard
                       errors and the paired differences of the claims (``results``)
    OUT/results.md     the same as tables, after the trade-off figure
    OUT/tradeoff.png   task gain against held-out drop, one point per method, the Pareto front
                       marked (``evaluation.tradeoff``)
    OUT/cells/<method>-s<seed>/   each cell's run directory (metrics, summary, checkpoints)

A seed sets the controller's data order, the schedule's draws, every rollout request's sampling
seed and the learners' torch seed: a cell samples the same tokens whichever cells ran before it
on the same engines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from ray_s3ft.config import ConfigError, load_config, save_config
from ray_s3ft.console import say
from ray_s3ft.evaluation.tradeoff import write_grid
from ray_s3ft.experiments.methods import DEFAULT_METHODS, METHODS
from ray_s3ft.experiments.results import collect, pct, results_markdown, within_budget
from ray_s3ft.run.target_store import STORE, TargetSet, read_store
from ray_s3ft.tracking import Trackers, grid_group


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


def parse_pairs(text: str, methods: list[str]) -> list[tuple[str, str]]:
    """``--pairs A-B,C-D``: each side one of ``methods``."""
    pairs = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        a, sep, b = item.partition("-")
        if not sep or a not in methods or b not in methods or a == b:
            raise ConfigError(
                f"--pairs: {item!r} is not A-B with two different methods of --methods "
                f"({','.join(methods)})"
            )
        pairs.append((a, b))
    return pairs


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


def run_grid(
    config: str | None,
    overrides: list[str],
    methods,
    seeds,
    out: Path,
    gather: bool = False,
    force: bool = False,
    pairs=(),
) -> dict:
    """``gather``: train nothing; the tables of the cells already finished (a grid whose seeds
    differ by method, or one still running elsewhere). A cell, the base model's evaluation or
    the target store made by another config or model is an error naming the keys that differ;
    ``force``: redo it (a cell's directory is emptied and the cell trained again). ``pairs``:
    ``(a, b)`` methods whose paired difference the tables add to the claims'."""
    from ray_s3ft.console import Phases
    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.run import fingerprint as fp
    from ray_s3ft.run.session import Session
    from ray_s3ft.run.train import train_and_evaluate
    from ray_s3ft.timing import Timer
    from ray_s3ft.workers.learner import LearnerActor

    if gather and force:
        raise ConfigError("--gather trains and evaluates nothing: --force has nothing to redo")
    base = load_config(config, [*overrides, f"trainer.output_dir={out}"])
    cells = [Cell(m, s) for m in methods if m != "base" for s in seeds]
    # every cell's config is validated before anything starts
    cfgs = {c: cell_config(config, overrides, c, out) for c in cells}
    model = fp.model_identity(base.model.path, resolve_model_path(base.model.path))
    fingerprints = {c: fp.cell_fingerprint(cfgs[c], model) for c in cells}
    todo = [c for c in cells if not _cell_done(out / "cells" / c.name, fingerprints[c], force)]
    say(f"compare: {len(cells)} cells ({len(cells) - len(todo)} done) in {out}")
    started = time.perf_counter()
    if gather:
        missing = [f for f in ("eval_before.json", STORE) if not (out / f).exists()]
        if missing:
            raise ConfigError(f"--gather: {out} has no {' or '.join(missing)}: not a grid run")
        say(f"compare --gather: {len(cells) - len(todo)} finished cells, nothing trained")
    before_ok = (out / "eval_before.json").exists() and fp.check_reuse(
        out / "eval_before.json",
        fp.load(out / "eval_before.fingerprint.json"),
        fp.eval_fingerprint(base, model),
        force,
    )
    if gather or (not todo and before_ok and (out / STORE).exists()):
        before = json.loads((out / "eval_before.json").read_text())
        store = TargetSet(read_store(out / STORE), "s3ft", computed=0, reused=0)
        return _finish(
            config, overrides, methods, seeds, out, before, store, started, gather, pairs
        )
    phases = Phases()
    session = phases.run("startup", Session.open, base, True)
    # the grid is a tracked run of its own; each cell a child of it (trainer.loggers)
    group = grid_group(out) if set(base.trainer.loggers) - {"tensorboard"} else None
    grid = Trackers.for_run(base, out, kind="grid", group=group).start()
    status = "FAILED"
    try:
        session.add_drift()
        before = phases.run("eval_before", session.eval_before, force)
        # one store serves gold, ssr and s3ft: build it with all rungs (s3ft). SDFT's, a
        # paraphrase of every gold, is a store of its own (OUT/sdft), built for its cells only
        store = phases.run("targets", session.build_targets, _targets(base, "s3ft"), force)
        stores = {"s3ft": store}
        if any(cfgs[c].algorithm.targets == "sdft" for c in todo):
            stores["sdft"] = phases.run(
                "targets_sdft", session.build_targets, _targets(base, "sdft"), force, out / "sdft"
            )
        for i, cell in enumerate(todo):
            cfg = cfgs[cell]
            cell_dir = Path(cfg.trainer.output_dir)
            cell_dir.mkdir(parents=True, exist_ok=True)
            fp.save(cell_dir / CELL_FINGERPRINT, fingerprints[cell])  # before any checkpoint
            save_config(cfg, cell_dir / "config.yaml")
            (cell_dir / "eval_before.json").write_text(json.dumps(before, indent=2) + "\n")
            cell_started = time.perf_counter()
            session.groups.learner.call(
                LearnerActor.reset, cell.seed, cfg.learner, cfg.algorithm.grpo
            )
            mode = cfg.algorithm.targets
            targets = dataclasses.replace(stores.get(mode, store), mode=mode, computed=0)
            trackers = Trackers.for_run(
                cfg, cell_dir, kind="cell", name=cell.name, group=group, parent=grid.ids
            )
            summary = train_and_evaluate(
                session, cfg, cell_dir, targets, before, Timer(), cell_started,
                engine_version=-1, trackers=trackers,
            )  # fmt: skip
            a = summary["accuracy_after"]
            say(
                f"cell {i + 1}/{len(todo)} {cell.name}: task {pct(a['task']['accuracy'])}, "
                f"held-out {pct(a['heldout_mean'])} "
                f"({summary['steps']['sft']} SFT / {summary['steps']['grpo']} GRPO"
                f"{f' / {mix} mix' if (mix := summary['steps'].get('mix')) else ''} steps, "
                f"{summary['wall_s']['total']:.0f} s)"
            )
        results = _finish(
            config, overrides, methods, seeds, out, before, store, started, pairs=pairs
        )
        _track_grid(grid, out, results)
        status = "FINISHED"
        return results
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        grid.finish(status)
        session.close()


CELL_FINGERPRINT = "fingerprint.json"


def _targets(cfg, mode: str):
    """``cfg`` with ``algorithm.targets`` = ``mode``: the store a grid builds for its cells."""
    return dataclasses.replace(cfg, algorithm=dataclasses.replace(cfg.algorithm, targets=mode))


def _cell_done(cell_dir: Path, fingerprint: dict, force: bool) -> bool:
    """A cell with a ``summary.json`` is done, and one with anything in its directory is
    resumed, while its fingerprint (``fingerprint.json``) matches; another one is a
    ConfigError naming the keys that differ, or with ``force`` an empty directory."""
    import shutil

    from ray_s3ft.run import fingerprint as fp

    if not cell_dir.is_dir() or not any(cell_dir.iterdir()):
        return False
    if not fp.check_reuse(cell_dir, fp.load(cell_dir / CELL_FINGERPRINT), fingerprint, force):
        say(f"compare --force: {cell_dir} was made by another config or model: redone")
        shutil.rmtree(cell_dir)
        return False
    return (cell_dir / "summary.json").exists()


def _track_grid(grid, out: Path, results: dict) -> None:
    """The grid's own run: each method's mean figures, results.md / .json, the report."""
    from ray_s3ft.run.train import draw_report

    for row in results["summary"]:  # mean and std over seeds, by method
        grid.log_eval(row["method"], {k: v for k, v in row.items() if k != "method"}, step=0)
    if not grid.keeps_files():
        return
    draw_report(out, out / "report")
    files = [out / f for f in ("results.md", "results.json", "targets.meta.json", "tradeoff.png")]
    grid.log_files([*files, *sorted((out / "report").glob("*"))], base=out)


def _finish(
    config, overrides, methods, seeds, out: Path, before, store, started, gather=False, pairs=()
) -> dict:
    results = collect(out, methods, seeds, before, store.fractions(), pairs)
    guard = load_config(config, list(overrides)).guard
    if guard.max_heldout_drop is not None or guard.max_drift is not None:
        results["budget"] = within_budget(
            results["summary"], guard.max_heldout_drop, guard.max_drift
        )
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["command"] = _command(config, overrides, methods, seeds, out, gather, pairs)
    if figure := write_grid(results, out):  # tradeoff.png: results.md shows it first
        results["tradeoff"] = figure
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    return results


def _command(config, overrides, methods, seeds, out, gather=False, pairs=()) -> str:
    parts = ["ray-s3ft compare"]
    if config:
        parts.append(f"--config {config}")
    parts += [f"--methods {','.join(methods)}", f"--seeds {','.join(map(str, seeds))}"]
    parts.append(f"--out {out}")
    if pairs:
        parts.append("--pairs " + ",".join(f"{a}-{b}" for a, b in pairs))
    if gather:
        parts.append("--gather")
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
    ap.add_argument(
        "--gather",
        action="store_true",
        help="start nothing: write results.md / results.json from the cells already finished",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="redo the cells, the base model's evaluation and the target store that another "
        "config or model made (default: stop and name the keys that differ)",
    )
    ap.add_argument(
        "--pairs",
        default="",
        metavar="A-B,...",
        help="more paired differences for the tables, each method A minus method B on the same "
        "questions (e.g. sasr_per_mode-sasr); the claims' pairs are always there",
    )
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every cell")
    args = ap.parse_args(argv)
    methods = parse_list(args.methods, "methods", METHODS)
    try:
        seeds = [int(s) for s in parse_list(args.seeds, "seeds")]
    except ValueError:
        raise ConfigError(
            f"--seeds: expected comma-separated integers, got {args.seeds!r}"
        ) from None
    pairs = parse_pairs(args.pairs, methods)
    out = Path(args.out)
    results = run_grid(
        args.config, args.overrides, methods, seeds, out, args.gather, args.force, pairs
    )
    print(results_markdown(results))
    print(f"saved {out / 'results.md'} and {out / 'results.json'}")
    return 0
