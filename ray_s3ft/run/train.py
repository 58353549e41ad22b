"""``ray-s3ft train`` and ``ray-s3ft build-targets``: the phases of a run, timed, and its summary.

    startup      start or join Ray; launch rollout, judge and learner groups
    eval_before  task and held-out accuracy of the base model (greedy, on the rollout engines)
    targets      phase 1: the S3FT target store (reused when already built)
    train        phase 2: the schedule's SFT / GRPO steps, checkpoints included
    eval_after   the same evaluation with the trained weights
    checkpoint   the final checkpoint

Evaluation here runs on the rollout engines (vLLM by default), which serve exactly the weights
being trained; ``ray-s3ft eval`` evaluates any saved checkpoint on its own.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from ray_s3ft.config import Config
from ray_s3ft.console import Phases
from ray_s3ft.run.session import Session, write_eval
from ray_s3ft.timing import Timer

log = logging.getLogger(__name__)


def train(cfg: Config, force: bool = False) -> dict:
    """``force``: redo the base model's evaluation and the target store of the run directory
    when another setting made them (else an error naming the keys that differ)."""
    from ray_s3ft.errors import OutOfMemory
    from ray_s3ft.run.recovery import memory_failure

    phases, started = Phases(), time.perf_counter()
    try:
        with phases.run("startup", Session.open, cfg, True) as session:
            session.add_drift()
            before = phases.run("eval_before", session.eval_before, force)
            targets = phases.run("targets", session.build_targets, None, force)
            summary = train_and_evaluate(
                session, cfg, session.run_dir, targets, before, phases, started
            )
    except OutOfMemory as e:  # outside the steps (those stop with their checkpoint to resume)
        config = Path(cfg.trainer.output_dir) / "config.yaml"
        again = f"What it finished is kept; go on with:\n  ray-s3ft train --config {config}"
        raise memory_failure(cfg, e, again) from None
    print_summary(summary)
    return summary


def train_and_evaluate(
    session: Session,
    cfg: Config,
    run_dir: Path,
    targets,
    before: dict,
    phases: Timer,
    started: float,
    engine_version: int = 0,
    trackers=None,
) -> dict:
    """Phases train -> checkpoint -> eval_after of a run with config ``cfg`` in ``run_dir``, on
    the session's groups and data; writes and returns the run summary (``summary.json``).
    ``ray-s3ft compare`` runs each cell of its grid with it. ``engine_version``: what the
    engines serve (-1: another cell's weights). ``trackers``: ``tracking.Trackers`` for the
    run, not started (none: ``trainer.loggers``)."""
    from ray_s3ft.tracking import Trackers

    trackers = trackers or Trackers.for_run(cfg, run_dir)
    status = "FAILED"
    try:
        summary = _train_and_evaluate(
            session, cfg, run_dir, targets, before, phases, started, engine_version, trackers
        )
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        trackers.finish(status)


def _train_and_evaluate(
    session, cfg, run_dir, targets, before, phases, started, engine_version, trackers
) -> dict:
    from ray_s3ft.run.controller import Controller
    from ray_s3ft.tasks.data_report import rows_too_long
    from ray_s3ft.tracking import eval_table, run_files

    groups = session.groups
    head = {name: exs[: cfg.eval.every_size] for name, exs in session.eval_sets.items()}
    ctl = Controller(
        cfg, run_dir, groups, session.tokenizer, session.examples, targets,
        evaluate=lambda: session.evaluate(cfg, head),
        engine_version=engine_version, guard=_guard(cfg, session.run_dir, head),
    )  # fmt: skip
    ctl.restore()
    trackers.start(first_step=ctl.state.step)
    trackers.log_eval("eval_before", before, step=0)
    phases.run("train", ctl.train, trackers)
    guard = _choose_weights(ctl, cfg) if ctl.guard is not None else None
    if guard is None or guard["chosen"]["weights"] == "final":
        ckpt = phases.run("checkpoint", ctl.checkpoint)
    else:  # the best weights within the forgetting budget have their checkpoint, or are the base
        ckpt = guard["chosen"].get("checkpoint")
    phases.run("sync", ctl.sync_weights)
    after = phases.run(
        "eval_after", ctl.on_synced_engines, lambda: session.evaluate(cfg, items=True)
    )
    after = write_eval(run_dir / "eval_after.json", after)  # + eval_after.items.jsonl
    phases.s["total"] = time.perf_counter() - started
    summary = {
        "run_dir": str(run_dir),
        "checkpoint": None if ckpt is None else str(ckpt),
        "accuracy_before": before,
        "accuracy_after": after,
        # the split the run ended with (targets that follow the policy move it)
        "targets": ctl.target_fractions(),
        "targets_undecided": targets.undecided(),
        # accepted self answers / paraphrases over data.max_response_tokens (gold used instead)
        "targets_too_long": targets.too_long(),
        # rows skipped at load for a token budget (prompt, gold answer): data_report.json
        "data_too_long": rows_too_long(session.run_dir),
        "targets_unfinished": targets.unfinished(),
        "targets_reused": targets.computed == 0,
        "grpo": _grpo_summary(ctl.state.judged),
        "steps": dict(ctl.state.steps),
        # the KL reference of the GRPO steps: the base model, or the policy after this step
        "reference": {"rule": cfg.schedule.reference, "reset_after_step": ctl.reference_step()},
        "faults": dict(ctl.state.faults),
        # algorithm.targets_refresh_every / rehearse_rollouts: what replaced store targets
        **(
            {
                "targets_followed": {
                    **ctl.state.follow_counts,
                    "replaced": len(ctl.state.followed),
                    "store": targets.fractions(),
                }
            }
            if cfg.algorithm.follows_policy
            else {}
        ),
        # guard.*: the budget, its checks, and which weights were evaluated after, and why
        **({"guard": guard} if guard is not None else {}),
        "nodes": groups.nodes(),  # the Ray node of each actor, by group
        "wall_s": {k: round(v, 1) for k, v in phases.s.items()},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if (
        cfg.algorithm.follows_policy
    ):  # each example's target at the end: its source and the step it came from
        _write_followed(run_dir / "targets.followed.jsonl", ctl, targets)
    last = cfg.trainer.max_steps
    trackers.log_eval("eval_after", after, step=last)
    trackers.log_table("eval_table", eval_table(before, after), step=last)
    trackers.log_summary(summary, step=last)
    if trackers.keeps_files():  # the report's figures go with the run
        draw_report(run_dir, run_dir)
        trackers.log_files(run_files(run_dir))
    return summary


def _write_followed(path: Path, ctl, targets) -> None:
    """One line per training example: its id, its target's source now, the step its text came
    from (0: the store's) and where from (store, refresh or rollout)."""
    with open(path, "w") as f:
        for i, (rec, (_, source)) in enumerate(zip(targets.records, ctl.target_texts())):
            new = ctl.state.followed.get(str(i))
            row = {"id": rec.id, "source": source, "step": new["step"] if new else 0,
                   "from": new["from"] if new else "store"}  # fmt: skip
            f.write(json.dumps(row) + "\n")


def _guard(cfg: Config, eval_dir: Path, head: dict):
    """The forgetting budget of ``cfg`` (None: none), its held-out drop measured against the
    base model's verdicts (``eval_dir/eval_before.items.jsonl``) on the in-loop questions."""
    from ray_s3ft.run.guard import Guard, base_heldout_mean

    g = cfg.guard
    if g.max_heldout_drop is None and g.max_drift is None:
        return None
    base = None
    if g.max_heldout_drop is not None:
        path = eval_dir / "eval_before.items.jsonl"
        items = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        base = base_heldout_mean(items, head)
    return Guard(g, base)


def _choose_weights(ctl, cfg: Config) -> dict:
    """After training under a forgetting budget: the weights to evaluate and report
    (``guard.chosen``): the final ones, else the best within budget (loaded from its
    checkpoint), else the base model's (the learners reset); the engines follow."""
    from ray_s3ft.run.guard import chosen
    from ray_s3ft.workers.learner import LearnerActor

    pick = chosen(ctl.state.guard, ctl.state.step)
    if pick["weights"] != "final":
        if pick["weights"] == "best":
            ctl.g.learner.call(LearnerActor.load, str(Path(pick["checkpoint"]) / "deepspeed"))
        else:
            ctl.g.learner.call(LearnerActor.reset, cfg.trainer.seed)
        ctl.state.version += 1  # other weights: the engines sync before eval_after
    log.warning("guard: %s", pick["why"])
    g = ctl.state.guard
    return {
        "budget": asdict(cfg.guard),
        "chosen": pick, "best": g.best, "last": g.last, "breaches": g.breaches,
        "stopped_at": ctl.state.step if ctl.stopped else None,
    }  # fmt: skip


def draw_report(run_dir: Path, out: Path) -> None:
    """``ray-s3ft report`` of a finished run or grid into ``out``, for the trackers; a report
    that fails is a warning (figures are a courtesy; the run is done)."""
    from ray_s3ft.evaluation.report import ReportError, write_report

    try:
        write_report([run_dir], out)
    except (ReportError, OSError, ValueError) as e:
        log.warning("report of %s for the trackers failed: %s", run_dir, e)


def _grpo_summary(judged: dict) -> dict:
    n = int(judged["samples"])
    out = {
        "samples": n,
        "mean_reward": judged["reward_sum"] / n if n else None,
        "undecided": int(judged["undecided"]),
        "unfinished": int(judged.get("unfinished", 0)),  # cut at rollout.max_new_tokens
    }
    if "extra_rounds" in judged:  # algorithm.grpo.dynamic_sampling
        out["extra_rounds"] = int(judged["extra_rounds"])
        out["dropped_groups"] = int(judged["dropped_groups"])
    return out


def build_targets_only(cfg: Config, force: bool = False) -> dict:
    with Session.open(cfg, learners=False) as session:
        result = session.build_targets(force=force)
        return {
            "computed": result.computed, "reused": result.reused, **result.fractions(),
            "undecided": result.undecided(), "too_long": result.too_long(),
            "unfinished": result.unfinished(),
        }  # fmt: skip


def print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from ray_s3ft.evaluation.scoring import heldout_sets, prompts_cut_note

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f} %"

    b, a = s["accuracy_before"], s["accuracy_after"]
    faults = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s["faults"].items() if v) or "none"
    table = Table(title=f"run summary ({s['run_dir']})")
    for col in ("", "before", "after"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("task accuracy", pct(b["task"]["accuracy"]), pct(a["task"]["accuracy"]))
    if "strict_accuracy" in b["task"]:  # math: each way of reading the final answer
        for mode in ("strict", "flexible"):
            key = f"{mode}_accuracy"
            table.add_row(f"  {mode} extraction", pct(b["task"][key]), pct(a["task"].get(key)))
    table.add_row("  undecided", str(b["task"]["unparsed"]), str(a["task"]["unparsed"]))
    cut = [str(ev["task"].get("unfinished", "-")) for ev in (b, a)]
    table.add_row("  cut at eval.max_new_tokens", *cut)
    for name in heldout_sets(b):
        table.add_row(f"held-out: {name}", pct(b[name]["accuracy"]), pct(a[name]["accuracy"]))
    table.add_row("held-out mean", pct(b["heldout_mean"]), pct(a["heldout_mean"]))
    if "drift" in b or "drift" in a:

        def kl(ev):  # the log-ratio can be < 0 on the base's own greedy tokens; k3 cannot
            d = ev.get("drift") or {}
            if d.get("kl") is None:
                return "-"
            return f"{d['kl']:.4f} / {d['k3']:.4f}"

        table.add_row("drift from base: log-ratio / k3 (nats/token)", kl(b), kl(a))
    console = Console()
    console.print(table)
    note = prompts_cut_note(a)  # the same prompts before and after
    if note:
        console.print(note, highlight=False)
    t, u = s["targets"], s.get("targets_undecided", {})
    long, rows = s.get("targets_too_long", {}), s.get("data_too_long", {})
    c = s.get("targets_unfinished", {})
    g = s.get("grpo") or {}
    grpo = ""
    if g.get("samples"):
        grpo = (
            f"GRPO: {g['samples']} samples, mean reward {g['mean_reward']:.3f}, "
            f"undecided {g['undecided']} ({g['undecided'] / g['samples']:.1%}), "
            f"cut at the budget {g.get('unfinished', 0) / g['samples']:.1%}\n"
        )
    console.print(
        f"targets: self {pct(t['self'])}, paraphrase {pct(t['paraphrase'])}, gold {pct(t['gold'])}"
        f"{' (reused)' if s['targets_reused'] else ''}; undecided verdicts: "
        f"self {u.get('self', 0)}, paraphrase {u.get('paraphrase', 0)}; over the response "
        f"budget: self {long.get('self', 0)}, paraphrase {long.get('paraphrase', 0)}; cut "
        f"answers rejected: self {c.get('self_rejected', 0)}, paraphrase "
        f"{c.get('paraphrase_rejected', 0)}\n"
        f"rows skipped at load, too long: prompt {rows.get('prompt', 0)}, "
        f"gold {rows.get('gold', 0)}\n"
        f"steps: {s['steps']['sft']} SFT, {s['steps']['grpo']} GRPO"
        + (f", {s['steps']['mix']} mix\n" if s["steps"].get("mix") else "\n")
        + f"{grpo}"
        f"faults survived: {faults}\n"
        "wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["wall_s"].items()) + "\n"
        f"checkpoint: {s['checkpoint'] or 'none (the base model is what is reported)'}"
        + (f"\nguard: {s['guard']['chosen']['why']}" if s.get("guard") else ""),
        highlight=False,
    )
