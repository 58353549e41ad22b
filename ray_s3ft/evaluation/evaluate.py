"""``ray-s3ft eval``: task accuracy and held-out accuracy of a model, the numbers S3FT is about.

The S3FT paper's argument is three numbers: task accuracy, the drop on held-out abilities relative
to the base model, and the target source fractions. This module measures the first two for any
model directory (the base model, or a checkpoint of a run) with greedy decoding.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray_s3ft.evaluation.scoring import prompts_cut_note, score_sets
from ray_s3ft.workers.types import Answer


def eval_sets(cfg) -> dict:
    """``{"task": ..., <held-out set>: ...}`` of ``cfg``; NQ answers judged as
    ``judge.verifier`` says. Bad data is a DataError here, before any engine starts."""
    from ray_s3ft.config import resolved_judge
    from ray_s3ft.tasks.loaders import load_eval_examples

    return load_eval_examples(cfg.data, cfg.eval, verifier=resolved_judge(cfg).verifier)


def evaluate(
    cfg, model_path: str | None = None, progress=None, console=None, sets: dict | None = None
) -> dict:
    """Score every eval set with ``cfg.eval.backend`` (``score_sets``: greedy answers, choices
    by log-likelihood, code in the sandbox, llm answers by the LLM judge; with ``eval.drift``
    the drift from the base model). Returns the report. ``progress(text)``: where its lines
    go (default: ``console``, a rich Console, or stdout); the generation bar goes to
    ``console``. ``sets``: the eval sets (``eval_sets(cfg)``), loaded here when None."""
    if progress is None:
        progress = (
            print
            if console is None
            else lambda text: console.print(text, markup=False, soft_wrap=True)
        )
    from ray_s3ft.model.paths import resolve_model_path

    path = resolve_model_path(model_path or cfg.model.path)
    sets = eval_sets(cfg) if sets is None else sets
    lm_tasks = list(cfg.eval.lm_eval_tasks)
    if lm_tasks:  # a missing harness or an unknown task fails now, not after decoding
        from ray_s3ft.evaluation.lm_eval_suite import check_tasks

        check_tasks(lm_tasks, cfg.eval.lm_eval_include_path)
    answered = sum(ex.verifier != "choice" for exs in sets.values() for ex in exs)
    progress(
        f"eval: {sum(map(len, sets.values()))} examples "
        f"({', '.join(f'{k} {len(v)}' for k, v in sets.items())}; {answered} answered, the rest "
        f"multiple choice by log-likelihood) with {cfg.eval.backend} on {path}"
    )
    engines = _EvalEngines(cfg, path, console)
    started = time.perf_counter()
    scores, records = score_sets(
        sets,
        greedy=engines.greedy,
        loglik=lambda pairs, raw=False: engines.worker(path).loglikelihoods(pairs, raw),
        judge=engines.judge,
        choice_target=cfg.eval.choice_target,
        math_extract=cfg.judge.math_extract,
        cut=lambda prompts, raw=False: engines.worker(path).prompts_cut(prompts, raw),
    )
    report: dict = {
        "model": path,
        "backend": cfg.eval.backend,
        "generate_s": round(engines.generate_s, 2),
        "score_s": round(time.perf_counter() - started, 2),
    }
    report["task"] = scores.pop("task")
    report["heldout"] = scores
    if scores:
        report["heldout_mean"] = sum(v["accuracy"] for v in scores.values()) / len(scores)
    if cfg.eval.drift:
        report["drift"] = engines.drift(path)
    if lm_tasks:
        import torch

        from ray_s3ft.evaluation.lm_eval_suite import run_lm_eval

        progress(f"lm-eval: {', '.join(lm_tasks)} on {path}")
        started = time.perf_counter()
        report["lm_eval"], lm_items = run_lm_eval(
            path,
            lm_tasks,
            cfg.eval.lm_eval_include_path,
            cfg.eval.lm_eval_limit,
            cfg.eval.batch_size,
            device="cuda" if torch.cuda.is_available() else "cpu",
            dtype=cfg.model.dtype,
            with_items=True,
        )
        records = records + lm_items  # each document's verdict beside the greedy sets' own
        report["lm_eval_s"] = round(time.perf_counter() - started, 2)
    report["responses"] = records
    return report


class _EvalEngines:
    """What ``evaluate`` scores with, each started on first use: one in-process
    ``RolloutWorker`` (``eval.backend``: vLLM or transformers) for greedy generation,
    log-likelihoods and token logprobs, and an in-process
    ``JudgeWorker`` (the sandbox, the LLM judge)."""

    def __init__(self, cfg, path: str, console=None) -> None:
        self.cfg, self.path, self.console = cfg, path, console
        self.generate_s = 0.0
        self._worker, self._worker_path, self._judge = None, None, None

    def greedy(self, prompts: list[str]) -> list[Answer]:
        """Greedy answers (``Answer``: text, ended or cut) from the scoring engine (vLLM or
        transformers: one engine)."""
        from rich.progress import Progress

        cfg, started = self.cfg, time.perf_counter()
        with Progress(transient=True, console=self.console) as bar:
            task = bar.add_task("generating", total=len(prompts))
            out = self.worker(self.path).answers(
                prompts, cfg.eval.max_new_tokens, on_batch=lambda n: bar.advance(task, n)
            )
        self.generate_s += time.perf_counter() - started
        return out

    def worker(self, path: str):
        """A scoring engine on ``path`` (one at a time: another path replaces it)."""
        if self._worker_path != path:
            from ray_s3ft.config import RolloutConfig
            from ray_s3ft.workers.rollout import RolloutWorker

            self._worker = None  # the old engine goes before the new one starts
            cfg = self.cfg
            rollout = RolloutConfig(
                backend=cfg.eval.backend,
                temperature=0.0,
                dtype=cfg.model.dtype,
                kv_cache_gib=cfg.rollout.kv_cache_gib,
            )
            self._worker = RolloutWorker(
                path, rollout, cfg.model.max_model_len, cfg.data.max_prompt_tokens,
                trust_remote_code=cfg.model.trust_remote_code, hf_batch_size=cfg.eval.batch_size,
            )  # fmt: skip
            self._worker_path = path
        return self._worker

    def judge(self, items: list) -> list:
        if self._judge is None:
            from ray_s3ft.config import resolved_judge
            from ray_s3ft.workers.judge import JudgeWorker

            cfg = self.cfg
            self._judge = JudgeWorker(resolved_judge(cfg), cfg.model.max_model_len)
        return self._judge.judge(items, by_item=True)

    def drift(self, path: str) -> dict:
        """``drift`` scores of ``path`` against the base model (``cfg.model.path``); the base
        answers are kept in ``eval.output_dir/drift_base.json``."""
        from ray_s3ft.model.paths import resolve_model_path
        from ray_s3ft.tasks import drift

        cfg, n = self.cfg, self.cfg.eval.max_new_tokens
        base = resolve_model_path(cfg.model.path)
        prompts = list(drift.PROMPTS[: cfg.eval.drift_size])
        items = drift.load_or_make_base(
            Path(cfg.eval.output_dir) / "drift_base.json",
            drift.fingerprint(base, prompts, n),
            lambda: drift.make_base(
                prompts,
                lambda p: self.worker(base).greedy_tokens(p, n),
                lambda pairs: self.worker(base).token_logprobs(pairs),
            ),
        )
        pairs = [(it.prompt_ids, it.token_ids) for it in items]
        return drift.drift_score(items, self.worker(path).token_logprobs(pairs))


def save_report(report: dict, out_dir: str | Path) -> Path:
    """``eval.json`` (the scores) and ``eval_responses.jsonl`` (every prompt and response with
    its verdict, ``correct``, and the question's ``id`` and prompt hash ``h``; lm-eval's
    documents as set ``lm_eval/<task>``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = {k: v for k, v in report.items() if k != "responses"}
    path = out / "eval.json"
    path.write_text(json.dumps(scores, indent=2) + "\n")
    with open(out / "eval_responses.jsonl", "w") as f:
        for rec in report.get("responses", []):
            f.write(json.dumps(rec) + "\n")
    return path


def print_report(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"eval of {report['model']} ({report['backend']}, greedy)")
    for col in ("set", "accuracy", "correct / n", "unparsed", "cut", "acc_norm", "chance"):
        table.add_column(col, justify="right" if col != "set" else "left")
    rows = [("task", report["task"])] + [
        (f"held-out: {k}", v) for k, v in report["heldout"].items()
    ]

    def pct(x):
        return "" if x is None else f"{100 * x:.1f} %"

    for name, s in rows:
        table.add_row(
            name, pct(s["accuracy"]), f"{s['correct']} / {s['n']}", str(s["unparsed"]),
            str(s.get("unfinished", "")), pct(s.get("acc_norm")), pct(s.get("chance")),
        )  # fmt: skip
    if "heldout_mean" in report:
        table.add_row("held-out mean", pct(report["heldout_mean"]), "", "", "", "", "")
    console.print(table)
    note = prompts_cut_note({"task": report["task"], **report["heldout"]})
    if note:
        console.print(note, highlight=False)
    task = report["task"]
    if "strict_accuracy" in task:
        console.print(
            f"task accuracy by answer extraction: strict {pct(task['strict_accuracy'])} "
            f"(markers only), flexible {pct(task['flexible_accuracy'])} (else the last number)",
            highlight=False,
        )
    if report.get("drift"):
        d = report["drift"]
        kl = "-" if d["kl"] is None else f"{d['kl']:.4f}"
        k3 = "-" if d["k3"] is None else f"{d['k3']:.4f}"
        console.print(
            f"drift from the base model: KL {kl} nats/token (k3 {k3}) on the base model's "
            f"greedy answers ({d['tokens']} tokens, {d['n']} prompts)",
            highlight=False,
        )
    if report.get("lm_eval"):
        lm = Table(title="lm-evaluation-harness")
        for col in ("task", "metric", "value", "stderr", "n"):
            lm.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for task, metrics in report["lm_eval"].items():
            for name, value in metrics.items():
                if name == "n" or name.split(",")[0].endswith("_stderr"):
                    continue
                err = metrics.get(
                    name.replace(",", "_stderr,", 1) if "," in name else f"{name}_stderr"
                )
                lm.add_row(
                    task,
                    name,
                    f"{value:.4f}",
                    "" if err is None else f"± {err:.4f}",
                    str(metrics.get("n", "")),
                )
        console.print(lm)
