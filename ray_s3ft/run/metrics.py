"""Per-step metrics: one JSON line per step in ``metrics.jsonl``, the same row to the run's
trackers (TensorBoard events beside it by default; ``ray_s3ft.tracking``), and a progress line
on the console.

Keys are namespaced (``learner/loss``, ``timing/rollout``...). A value that is not a finite number
(a signal not observed yet) is written as JSON ``null`` and left out of the trackers, so the file
stays strict JSON. On resume, lines of steps the restored checkpoint does not cover are dropped,
so the file never holds one step twice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

METRICS = "metrics.jsonl"
# the GRPO figures every row reports, in its order (``sampling.GRPOStats`` fields)
EVERY_ROW = (
    "reward_mean", "zero_std_groups", "undecided", "undecided_frac", "unfinished",
    "tokens_per_s", "response_tokens", "discarded",
)  # fmt: skip


def _clean(value):
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    value = float(value)
    return value if math.isfinite(value) else None


class MetricsLogger:
    """``trackers``: the run's started ``Trackers``, owned (finished) by the caller; none: a
    TensorBoard tracker of this logger's own."""

    def __init__(self, run_dir: Path, first_step: int = 0, trackers=None) -> None:
        from ray_s3ft.tracking import RunInfo, Trackers
        from ray_s3ft.tracking.backends import TensorBoardTracker

        self.run_dir, self.path = run_dir, run_dir / METRICS
        self._own = trackers is None
        if trackers is None:
            run = RunInfo(run_dir=run_dir, name=run_dir.name, config={})
            trackers = Trackers([TensorBoardTracker()], run).start(first_step)
        self.trackers = trackers
        self._open(first_step)

    def _open(self, first_step: int) -> None:
        self._truncate_from(first_step)
        self._file = open(self.path, "a")  # noqa: SIM115 -- open for the run, closed by close()

    def _truncate_from(self, first_step: int) -> None:
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] < first_step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in keep))
        os.replace(tmp, self.path)

    def log(self, row: dict) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.trackers.log_row(row)

    def rewind(self, first_step: int) -> None:
        """Forget the steps from ``first_step`` on (a learner restart goes back to its
        checkpoint and runs them again)."""
        self._file.close()
        self._open(first_step)
        self.trackers.rewind(first_step)

    def close(self) -> None:
        self._file.close()
        if self._own:
            self.trackers.finish()


class Progress:
    """A rich progress bar with the step line (``step_line``); plain lines when not a terminal
    (``ray job submit`` logs, CI), one per step."""

    def __init__(self, total: int, start: int = 0) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self.console = Console()
        self.total = total
        self.seconds: dict[str, list[float]] = {m: [] for m in ("sft", "grpo", "mix")}
        self.bar = None
        if self.console.is_terminal:
            self.bar = Bar(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=self.console,
            )
            self.task = self.bar.add_task("", total=total, completed=start)
            self.bar.start()

    def update(self, row: dict) -> None:
        """After the step of ``row`` (``step_row``, with ``timing/eval`` when it evaluated)."""
        self.seconds[row["mode"]].append(row["timing/step"] + (row.get("timing/eval") or 0.0))
        eta = eta_seconds(
            self.seconds, row["sasr/p_sft"], self.total - row["step"] - 1, row["mode"]
        )
        text = step_line(row, self.total, eta)
        if self.bar is not None:
            self.bar.update(self.task, completed=row["step"] + 1, description=text)
        else:
            self.console.print(text, highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def step_line(row: dict, total: int, eta_s: float | None) -> str:
    """What a step did: its mode and loss, a GRPO step's mean reward (an SFT step has none:
    the row's ``reward/mean`` is the latest GRPO step's), the p_sft its mode was drawn with,
    and the time left."""
    text = f"step {row['step'] + 1}/{total} {row['mode']:4s} loss {row['learner/loss']:.4f}"
    if row["mode"] in ("grpo", "mix"):
        text += f" reward {row['reward/mean']:.3f}"
    text += f" {'mu' if row['mode'] == 'mix' else 'p_sft'} {row['sasr/p_sft']:.2f}"
    if eta_s is not None:
        text += f" eta {_duration(eta_s)}"
    return text


def eta_seconds(
    seconds: dict[str, list[float]], p_sft: float, remaining: int, mode: str = "sft"
) -> float | None:
    """Time left: ``remaining`` steps, each SFT with probability ``p_sft`` at the mean time
    of this run's SFT steps so far, else GRPO at theirs (a mode not seen yet: the other's
    mean). GRPO steps (rollout, judge) take several SFT steps' time, so one mean over both
    would be off once the schedule's mix changes. After a mix step (``mode``), the rest are
    taken as mix steps at their mean time. None before the first step."""
    means = {m: sum(v) / len(v) for m, v in seconds.items() if v}
    if not means:
        return None
    if mode == "mix":
        return remaining * means["mix"]
    sft = means.get("sft", means.get("grpo"))
    grpo = means.get("grpo", sft)
    return remaining * (p_sft * sft + (1.0 - p_sft) * grpo)


def _duration(s: float) -> str:
    """42s, 1m06s, 2h03m."""
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def step_row(
    step: int, d, sched: dict, fractions: dict, stats, last, weights_and_faults: dict,
    dynamic_sampling: bool, timer, seconds: float,
) -> dict:  # fmt: skip
    """One step's metrics row: the schedule's decision ``d`` and its ``sched`` stats, the
    store's target ``fractions``, the learner's ``stats`` (``StepStats``), the latest GRPO
    figures ``last`` (``GRPOStats``), the weights versions and fault counts, and the phase
    times of ``timer`` (``timing/<phase>``, ``timing/step`` = ``seconds``)."""
    row = {
        "step": step,
        "mode": d.mode,
        "sasr/p_sft": d.p_sft,
        "sasr/grad_norm": sched["grad_norm"],
        "sasr/grad_norm_warm": sched["grad_norm_warm"],
        "sasr/kl": sched["kl"],
        "sasr/probe": float(d.probe),
        "targets/self_frac": fractions["self"],
        "targets/para_frac": fractions["paraphrase"],
        "targets/gold_frac": fractions["gold"],
        "learner/loss": stats.loss,
        "learner/grad_norm": stats.grad_norm,
        "learner/lr": stats.lr,
        "learner/kl": stats.kl,
        "learner/entropy": stats.entropy,
        "learner/tokens": stats.tokens,
        # reward/rollout/judge values are the latest GRPO step's (0.0 before the first one)
        **dict(map(last.key, EVERY_ROW)),
        **weights_and_faults,
    }
    if d.mode == "mix":  # its SFT part; the GRPO figures follow
        row.update({
            "mix/mu": stats.mix.mu,
            "mix/sft_loss": stats.mix.sft_loss,
            "mix/sft_grad_norm": stats.mix.sft_grad_norm,
        })  # fmt: skip
    if d.mode in ("grpo", "mix"):
        row.update({
            "learner/pg_loss": stats.pg_loss,
            "learner/clip_frac": stats.clip_frac,
            "learner/updates": stats.updates,
            "learner/ratio_dev": stats.ratio_dev,
            "rollout/logprob_diff": stats.logprob_diff,
            "rollout/logprob_max_diff": stats.logprob_max_diff,
            "rollout/sample_digest": last.sample_digest,
            "rollout/staleness": last.staleness,
            "rollout/is_weight": stats.is_weight,
            "rollout/is_clip_frac": stats.is_clip_frac,
        })  # fmt: skip
        if dynamic_sampling:
            row.update(map(last.key, ("dynamic_rounds", "dynamic_dropped")))
    row.update({f"timing/{k}": v for k, v in timer.s.items()})
    row["timing/step"] = seconds
    return row


def eval_metrics(scores: dict) -> dict[str, float]:
    """``evaluate_on_engines`` output -> metrics keys: ``eval/task_accuracy``,
    ``eval/heldout_mean``, ``eval/heldout/<set>`` (and ``eval/heldout/<set>_acc_norm`` for a
    multiple-choice set), ``eval/drift_kl`` and ``eval/drift_k3`` with ``eval.drift``."""
    from ray_s3ft.evaluation.scoring import heldout_sets

    out = {"eval/task_accuracy": scores["task"]["accuracy"]}
    if scores.get("heldout_mean") is not None:
        out["eval/heldout_mean"] = scores["heldout_mean"]
    for name, v in heldout_sets(scores).items():
        out[f"eval/heldout/{name}"] = v["accuracy"]
        if v.get("acc_norm") is not None:
            out[f"eval/heldout/{name}_acc_norm"] = v["acc_norm"]
    for key in ("kl", "k3"):
        if (scores.get("drift") or {}).get(key) is not None:
            out[f"eval/drift_{key}"] = scores["drift"][key]
    return out
