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

from ray_s3ft.config import Config, resolved_judge, save_config
from ray_s3ft.timing import Timer

log = logging.getLogger(__name__)


def _say(text: str) -> None:
    from rich.console import Console

    Console().print(f"[bold]ray-s3ft[/bold] {text}", highlight=False)


class Phases(Timer):
    """Wall time per phase of the run, in order, announced on the console."""

    def run(self, name: str, fn, *args, **kw):
        _say(f"{name} ...")
        out = super().run(name, fn, *args, **kw)
        _say(f"{name} done in {self.s[name]:.1f} s")
        return out


def _setup(cfg: Config, learners: bool):
    """Everything before the actors start is checked first (paths, data, cluster), so a bad
    input costs seconds, not a launch."""
    from rich.markup import escape

    from ray_s3ft.cluster import launch, log_dir, start_ray
    from ray_s3ft.model.encoding import load_tokenizer
    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.preflight import check_before_ray, check_cluster
    from ray_s3ft.tasks.loaders import load_run_data, prompt_token_counter

    check_before_ray(cfg)  # model path, output directory, RAY_ADDRESS
    run_dir = Path(cfg.trainer.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    model_path = resolve_model_path(cfg.model.path)
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    examples, eval_sets = load_run_data(  # bad data stops here, with data_report.json
        cfg, run_dir, count_tokens=prompt_token_counter(tokenizer), with_eval=learners,
        say=lambda line: _say(escape(line)),
    )  # fmt: skip
    started_ray = start_ray(cfg, run_dir)
    try:
        # resources it lacks: an error, or a wait of resources.wait_for_resources_s for nodes
        # that join late (an autoscaling cluster), with a line on what is missing
        check_cluster(cfg, learners=learners, say=lambda line: _say(escape(line)))
        groups = launch(cfg, model_path, learners=learners, log_dir=log_dir(run_dir))
    except BaseException:
        if started_ray:
            import ray

            ray.shutdown()
        raise
    return run_dir, model_path, examples, eval_sets, tokenizer, groups, started_ray


def build_targets(cfg: Config, groups, examples, run_dir: Path, model_path: str):
    from rich.progress import Progress

    from ray_s3ft.prompts import paraphrase_template
    from ray_s3ft.target_store import build_targets as build
    from ray_s3ft.workers.judge import judge_on
    from ray_s3ft.workers.rollout import RolloutWorker

    n = cfg.rollout.max_new_tokens
    template = paraphrase_template(cfg.data.task, cfg.data.paraphrase_template)
    fingerprint = {  # the prompts are in the examples' digest
        "model": model_path,
        "task": cfg.data.task,
        "train_size": len(examples),
        "max_new_tokens": n,
        "judge": asdict(resolved_judge(cfg)),
        "paraphrase_template": template,
    }
    with Progress(transient=True) as bar:
        task = bar.add_task("S3FT targets", total=len(examples))
        result = build(
            examples,
            run_dir,
            mode=cfg.algorithm.targets,
            fingerprint=fingerprint,
            greedy=lambda p, m: groups.rollout.map(RolloutWorker.greedy, p, max_new_tokens=m),
            paraphrase=lambda p, m: groups.rollout.map(
                RolloutWorker.paraphrase, p, max_new_tokens=m, template=template
            ),
            judge=lambda items: judge_on(groups.judge, items, cfg.judge.timeout_s)[0],
            max_new_tokens=n,
            on_chunk=lambda k: bar.advance(task, k),
        )
    frac, und = result.fractions(), result.undecided()
    _say(
        f"targets ({cfg.algorithm.targets}): {result.computed} built, {result.reused} reused; "
        f"self {frac['self']:.1%}, paraphrase {frac['paraphrase']:.1%}, gold {frac['gold']:.1%}; "
        f"undecided verdicts: self {und['self']}, paraphrase {und['paraphrase']} "
        f"of {len(result.records)}"
    )
    return result


def evaluate_on_engines(
    groups,
    eval_sets: dict,
    max_new_tokens: int,
    *,
    choice_target: str = "text",
    judge_timeout_s: float | None = None,
    math_extract: str = "flexible",
) -> dict:
    """Every eval set scored on the rollout engines (the weights being trained): greedy answers,
    multiple choice by log-likelihood, code in the sandbox and llm answers by the LLM judge on
    the judge workers (``evaluate.score_sets``); the ``drift`` set (``with_drift``) as
    ``{"kl", "k3", "tokens", "n"}``. ``{set: scores, "heldout_mean": ..., "drift": ...}``."""
    from ray_s3ft.evaluate import heldout_sets, score_sets
    from ray_s3ft.tasks import drift
    from ray_s3ft.workers.judge import judge_on
    from ray_s3ft.workers.rollout import RolloutWorker

    out, _ = score_sets(
        {k: v for k, v in eval_sets.items() if k != drift.NAME},
        greedy=lambda p: groups.rollout.map(RolloutWorker.greedy, p, max_new_tokens=max_new_tokens),
        loglik=lambda pairs, raw=False: groups.rollout.map(
            RolloutWorker.loglikelihoods, pairs, raw=raw
        ),
        judge=lambda items: judge_on(groups.judge, items, judge_timeout_s, by_item=True)[0],
        choice_target=choice_target,
        math_extract=math_extract,
    )
    heldout = [v["accuracy"] for v in heldout_sets(out).values()]
    out["heldout_mean"] = sum(heldout) / len(heldout) if heldout else None
    if eval_sets.get(drift.NAME):
        items = eval_sets[drift.NAME]
        pairs = [(it.prompt_ids, it.token_ids) for it in items]
        out[drift.NAME] = drift.drift_score(
            items, groups.rollout.map(RolloutWorker.token_logprobs, pairs)
        )
    return out


def eval_options(cfg: Config) -> dict:
    """``evaluate_on_engines``' options from a config."""
    return {
        "choice_target": cfg.eval.choice_target,
        "judge_timeout_s": cfg.judge.timeout_s,
        "math_extract": cfg.judge.math_extract,
    }


def with_drift(cfg: Config, groups, eval_sets: dict, run_dir: Path, model_path: str) -> dict:
    """``eval_sets`` plus the ``drift`` set when ``eval.drift`` is on: the base model's greedy
    answers to the shipped general prompts and their base logprobs, made on the engines while
    they serve the base weights (call before any weight sync) and kept in
    ``run_dir/drift_base.json``."""
    from ray_s3ft.tasks import drift
    from ray_s3ft.tasks.loaders import DataError
    from ray_s3ft.workers.rollout import RolloutWorker

    if not cfg.eval.drift:
        return eval_sets
    if drift.NAME in eval_sets:
        raise DataError(f"eval set name {drift.NAME!r} is taken; eval.drift needs it")
    n, prompts = cfg.eval.max_new_tokens, list(drift.PROMPTS[: cfg.eval.drift_size])
    items = drift.load_or_make_base(
        run_dir / "drift_base.json",
        drift.fingerprint(model_path, prompts, n),
        lambda: drift.make_base(
            prompts,
            lambda p: groups.rollout.map(RolloutWorker.greedy_tokens, p, max_new_tokens=n),
            lambda pairs: groups.rollout.map(RolloutWorker.token_logprobs, pairs),
        ),
    )
    return {**eval_sets, drift.NAME: items}


def _cached_eval(path: Path, fn):
    if path.exists():
        return json.loads(path.read_text())
    result = fn()
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def train(cfg: Config) -> dict:
    phases, started = Phases(), time.perf_counter()
    run_dir, model_path, examples, eval_sets, tok, groups, started_ray = phases.run(
        "startup", _setup, cfg, True
    )
    try:
        eval_sets = with_drift(cfg, groups, eval_sets, run_dir, model_path)
        before = phases.run(
            "eval_before",
            _cached_eval,
            run_dir / "eval_before.json",
            lambda: evaluate_on_engines(
                groups, eval_sets, cfg.eval.max_new_tokens, **eval_options(cfg)
            ),
        )
        targets = phases.run("targets", build_targets, cfg, groups, examples, run_dir, model_path)
        summary = train_and_evaluate(
            cfg, run_dir, groups, tok, examples, eval_sets, targets, before, phases, started
        )
        print_summary(summary)
        return summary
    finally:
        _shutdown(groups, started_ray)


def train_and_evaluate(
    cfg: Config,
    run_dir: Path,
    groups,
    tok,
    examples,
    eval_sets: dict,
    targets,
    before: dict,
    phases: Timer,
    started: float,
    engine_version: int = 0,
    trackers=None,
) -> dict:
    """Phases train -> checkpoint -> eval_after on launched groups; writes and returns the
    run summary (``summary.json``). ``ray-s3ft compare`` runs each cell of its grid with it.
    ``trackers``: ``tracking.Trackers`` for the run, not started (none: ``trainer.loggers``)."""
    from ray_s3ft.tracking import Trackers

    trackers = trackers or Trackers.for_run(cfg, run_dir)
    status = "FAILED"
    try:
        summary = _train_and_evaluate(
            cfg, run_dir, groups, tok, examples, eval_sets, targets, before, phases, started,
            engine_version, trackers,
        )  # fmt: skip
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        trackers.finish(status)


def _train_and_evaluate(
    cfg, run_dir, groups, tok, examples, eval_sets, targets, before, phases, started,
    engine_version, trackers,
) -> dict:  # fmt: skip
    from ray_s3ft.controller import Controller
    from ray_s3ft.tracking import eval_table, run_files

    n_eval = cfg.eval.max_new_tokens
    head = {name: exs[: cfg.eval.every_size] for name, exs in eval_sets.items()}
    ctl = Controller(
        cfg, run_dir, groups, tok, examples, targets,
        evaluate=lambda: evaluate_on_engines(groups, head, n_eval, **eval_options(cfg)),
        engine_version=engine_version,
    )  # fmt: skip
    ctl.restore()
    trackers.start(first_step=ctl.state.step)
    trackers.log_eval("eval_before", before, step=0)
    phases.run("train", ctl.train, trackers)
    ckpt = phases.run("checkpoint", ctl.checkpoint)
    phases.run("sync", ctl.sync_weights)
    after = phases.run(
        "eval_after", evaluate_on_engines, groups, eval_sets, n_eval, **eval_options(cfg)
    )
    (run_dir / "eval_after.json").write_text(json.dumps(after, indent=2) + "\n")
    phases.s["total"] = time.perf_counter() - started
    summary = {
        "run_dir": str(run_dir),
        "checkpoint": str(ckpt),
        "accuracy_before": before,
        "accuracy_after": after,
        "targets": targets.fractions(),
        "targets_undecided": targets.undecided(),
        "targets_reused": targets.computed == 0,
        "grpo": _grpo_summary(ctl.state.judged),
        "steps": dict(ctl.state.steps),
        # the KL reference of the GRPO steps: the base model, or the policy after this step
        "reference": {"rule": cfg.schedule.reference, "reset_after_step": ctl.reference_step()},
        "faults": dict(ctl.state.faults),
        "nodes": groups.nodes(),  # the Ray node of each actor, by group
        "wall_s": {k: round(v, 1) for k, v in phases.s.items()},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    last = cfg.trainer.max_steps
    trackers.log_eval("eval_after", after, step=last)
    trackers.log_table("eval_table", eval_table(before, after), step=last)
    trackers.log_summary(summary, step=last)
    if trackers.keeps_files():  # the report's figures go with the run
        draw_report(run_dir, run_dir)
        trackers.log_files(run_files(run_dir))
    return summary


def draw_report(run_dir: Path, out: Path) -> None:
    """``ray-s3ft report`` of a finished run or grid into ``out``, for the trackers; a report
    that fails is a warning (figures are a courtesy; the run is done)."""
    from ray_s3ft.report import ReportError, write_report

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
    }
    if "extra_rounds" in judged:  # algorithm.grpo.dynamic_sampling
        out["extra_rounds"] = int(judged["extra_rounds"])
        out["dropped_groups"] = int(judged["dropped_groups"])
    return out


def build_targets_only(cfg: Config) -> dict:
    run_dir, model_path, examples, _, _, groups, started_ray = _setup(cfg, learners=False)
    try:
        result = build_targets(cfg, groups, examples, run_dir, model_path)
        return {
            "computed": result.computed, "reused": result.reused, **result.fractions(),
            "undecided": result.undecided(),
        }  # fmt: skip
    finally:
        _shutdown(groups, started_ray)


def _shutdown(groups, started_ray: bool) -> None:
    import ray

    groups.shutdown()
    if started_ray:
        ray.shutdown()


def print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from ray_s3ft.evaluate import heldout_sets

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
    t, u = s["targets"], s.get("targets_undecided", {})
    g = s.get("grpo") or {}
    grpo = ""
    if g.get("samples"):
        grpo = (
            f"GRPO: {g['samples']} samples, mean reward {g['mean_reward']:.3f}, "
            f"undecided {g['undecided']} ({g['undecided'] / g['samples']:.1%})\n"
        )
    console.print(
        f"targets: self {pct(t['self'])}, paraphrase {pct(t['paraphrase'])}, gold {pct(t['gold'])}"
        f"{' (reused)' if s['targets_reused'] else ''}; undecided verdicts: "
        f"self {u.get('self', 0)}, paraphrase {u.get('paraphrase', 0)}\n"
        f"steps: {s['steps']['sft']} SFT, {s['steps']['grpo']} GRPO\n"
        f"{grpo}"
        f"faults survived: {faults}\n"
        "wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["wall_s"].items()) + "\n"
        f"checkpoint: {s['checkpoint']}",
        highlight=False,
    )
