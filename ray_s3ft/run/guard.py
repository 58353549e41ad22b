"""A forgetting budget (``guard.*``, ours): how far a run may fall below the base model on the
held-out suites, or drift from it, before it acts.

At each in-loop evaluation (``eval.every``) the controller asks ``Guard.check`` with that
evaluation's ``eval/*`` metrics:

- held-out drop = the base model's held-out mean minus the policy's, in points, both on the
  in-loop questions (the first ``eval.every_size`` of each held-out set; the base's from its
  per-question verdicts in ``eval_before.items.jsonl``, so the two are paired on the same
  questions); over ``guard.max_heldout_drop`` is a breach;
- drift = ``eval/drift_k3``, the policy's KL from the base model (nats per token) on the
  drift prompts; over ``guard.max_drift`` is a breach.

On a breach the run does what ``guard.action`` says: ``stop`` ends training there;
``rehearse`` trains the SFT side on the model's own accepted answers only (the self targets)
until a check is within budget again. Either way the weights a run reports are the final ones
if its last check was within budget, else the best within budget (the highest in-loop task
accuracy among the checks that passed, whose checkpoint is kept for this), else the base
model's. ``GuardState`` is what a checkpoint keeps of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ray_s3ft.config import GuardConfig


@dataclass
class GuardState:
    rehearsing: bool = False  # guard.action rehearse: the SFT side on self targets only
    # the best check within budget: step, checkpoint, task accuracy, drop, drift
    best: dict | None = None
    last: dict | None = None  # the latest check: step, within, reasons
    breaches: int = 0  # checks over budget

    @classmethod
    def from_json(cls, d: dict | None) -> GuardState:
        return cls(**(d or {}))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class BudgetCheck:
    step: int  # the steps taken when it was measured
    task: float  # in-loop task accuracy
    heldout_drop: float | None  # points; None: not budgeted
    drift: float | None  # nats per token; None: not budgeted
    reasons: list[str] = field(default_factory=list)  # empty: within budget

    @property
    def within(self) -> bool:
        return not self.reasons


def base_heldout_mean(items: list[dict], head: dict[str, list]) -> float | None:
    """The base model's held-out mean over the in-loop questions: per held-out set of
    ``head`` (set name -> its first ``eval.every_size`` examples; ``task`` and ``drift`` are
    not held-out), the share of those questions ``items`` (``eval_before``'s verdicts) marks
    correct; the mean over the sets. None without held-out sets."""
    accs = []
    for name, examples in head.items():
        if name in ("task", "drift") or not examples:
            continue
        verdicts = {it["id"]: it["correct"] for it in items if it["set"] == name}
        missing = [e.id for e in examples if e.id not in verdicts]
        if missing:
            raise ValueError(
                f"guard: the base model's evaluation has no verdict for {len(missing)} in-loop "
                f"question(s) of {name!r} (first: {missing[0]}); rerun it with --force"
            )
        accs.append(sum(verdicts[e.id] is True for e in examples) / len(examples))
    return sum(accs) / len(accs) if accs else None


class Guard:
    def __init__(self, cfg: GuardConfig, base_heldout: float | None) -> None:
        self.cfg, self.base_heldout = cfg, base_heldout
        if cfg.max_heldout_drop is not None and base_heldout is None:
            raise ValueError("guard.max_heldout_drop needs the base model's held-out mean")

    @property
    def enabled(self) -> bool:
        return self.cfg.max_heldout_drop is not None or self.cfg.max_drift is not None

    def check(self, step: int, metrics: dict) -> BudgetCheck:
        """The budget against one in-loop evaluation's ``eval/*`` metrics."""
        c = self.cfg
        drop = drift = None
        reasons = []
        if c.max_heldout_drop is not None:
            drop = 100.0 * (self.base_heldout - metrics["eval/heldout_mean"])
            if drop > c.max_heldout_drop:
                reasons.append(
                    f"held-out drop {drop:.1f} points > guard.max_heldout_drop "
                    f"{c.max_heldout_drop:g}"
                )
        if c.max_drift is not None:
            drift = metrics["eval/drift_k3"]
            if drift > c.max_drift:
                reasons.append(f"drift {drift:.4g} nats/token > guard.max_drift {c.max_drift:g}")
        return BudgetCheck(step, metrics["eval/task_accuracy"], drop, drift, reasons)

    def update(self, state: GuardState, check: BudgetCheck) -> str | None:
        """Fold ``check`` into ``state``; returns what the controller must do now: "save" a
        checkpoint for a new best within budget (then ``set_best``), "stop", or None."""
        state.last = {"step": check.step, "within": check.within, "reasons": check.reasons}
        if check.within:
            state.rehearsing = False
            if state.best is None or check.task > state.best["task"]:
                return "save"
            return None
        state.breaches += 1
        if self.cfg.action == "stop":
            return "stop"
        state.rehearsing = True
        return None

    @staticmethod
    def set_best(state: GuardState, check: BudgetCheck, checkpoint: str) -> None:
        state.best = {
            "step": check.step, "checkpoint": checkpoint, "task": check.task,
            "heldout_drop": check.heldout_drop, "drift": check.drift,
        }  # fmt: skip


def chosen(state: GuardState, final_step: int) -> dict:
    """The weights a guarded run reports, and why (``summary.json``'s ``guard.chosen``)."""
    last = state.last
    if last is None or last["within"]:
        why = "no in-loop check yet" if last is None else f"within budget at step {last['step']}"
        return {"weights": "final", "step": final_step, "why": f"the final weights: {why}"}
    over = "; ".join(last["reasons"])
    if state.best is not None:
        b = state.best
        return {
            "weights": "best", "step": b["step"], "checkpoint": b["checkpoint"],
            "why": f"over budget at step {last['step']} ({over}); the best within budget: "
            f"task {100 * b['task']:.1f} % at step {b['step']}",
        }  # fmt: skip
    return {
        "weights": "base", "step": 0,
        "why": f"over budget at step {last['step']} ({over}) and at every check before: "
        "the base model",
    }  # fmt: skip
