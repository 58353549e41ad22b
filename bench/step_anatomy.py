"""Anatomy of a GRPO step: time per phase, controller overhead, and the step's wall time over its
longest phase, for synchronous rollouts (the baseline) and ``rollout.async=true`` in one run.

Both runs are ``ray-s3ft train schedule.kind=grpo`` on the built-in default, the same steps,
prompts and seeds; the figures come from their ``metrics.jsonl`` (``timing/<phase>``,
``timing/step``), the first ``--skip`` steps left out (compilation, cache warm-up).

- ``wall / longest phase``: 1.0 would mean everything else hides behind the longest phase;
  one after another it is the sum of the phases over the largest. Goal <= 1.2.
- ``controller overhead``: step wall minus the sum of its timed phases.
- samples/s and tokens/s: GRPO responses (and their tokens) trained on per second of step.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import Row, parser, report

PHASES = ("batch", "sync", "rollout", "judge", "prefetch", "train")


def run(out: Path, steps: int, extra: list[str]) -> list[dict]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable, "-m", "ray_s3ft.cli", "train", "schedule.kind=grpo",
        "algorithm.targets=gold",  # GRPO steps never read SFT targets: skip building them
        f"trainer.max_steps={steps}", f"trainer.checkpoint_every={steps}", "eval.every=0",
        "eval.task_size=16", "eval.heldout_size=8", f"trainer.output_dir={out}", *extra,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def anatomy(rows: list[dict], samples_per_step: int) -> dict:
    mean = {p: statistics.mean(r[f"timing/{p}"] for r in rows) for p in PHASES}
    step = statistics.mean(r["timing/step"] for r in rows)
    tokens = statistics.mean(r["rollout/response_tokens"] for r in rows) * samples_per_step
    return {
        "step_s": step,
        "phases_s": mean,
        "share": {p: v / step for p, v in mean.items()},
        "overhead_s": step - sum(mean.values()),
        "wall_over_longest": step / max(mean.values()),
        "samples_per_s": samples_per_step / step,
        "tokens_per_s": tokens / step,
        "reward_mean": statistics.mean(r["reward/mean"] for r in rows),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = parser("step_anatomy", __doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, help="GRPO steps per run (default 40; --smoke: 4)")
    ap.add_argument("--skip", type=int, default=3, help="first steps left out of the figures")
    ap.add_argument(
        "--rounds", type=int, default=2, help="sync/async runs, alternated (noise evens out)"
    )
    ap.add_argument(
        "--overrides", default="", help="space-separated key=value for both runs, after the "
        "benchmark's own (trainer.checkpoint_every=3, data.train_size=32...)",
    )  # fmt: skip
    ap.add_argument(
        "--keep", type=Path, help="write the runs here (sync0, async0, ...) and keep them; "
        "default: a temporary directory",
    )  # fmt: skip
    args = ap.parse_args(argv)
    extra = []
    args.steps = args.steps or (4 if args.smoke else 40)
    if args.smoke:
        args.skip, args.rounds = 1, 1
        extra = ["data.train_size=16"]  # 4 steps x 4 prompts
    extra += args.overrides.split()
    samples = 4 * 4  # trainer.grpo_prompts_per_step x algorithm.grpo.group_size (defaults)
    sync, overlap = [], []
    with tempfile.TemporaryDirectory(prefix="rb-step-") as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        for i in range(args.rounds):
            sync += run(tmp / f"sync{i}", args.steps, extra)[args.skip :]
            asynchronous = [*extra, "rollout.async=true"]
            overlap += run(tmp / f"async{i}", args.steps, asynchronous)[args.skip :]
    a, b = anatomy(sync, samples), anatomy(overlap, samples)
    rows = [
        Row("sync: step wall / longest phase", a["wall_over_longest"], 1.0, "x", ("<=", 1.2)),
        Row("async: step wall / longest phase", b["wall_over_longest"], 1.0, "x", ("<=", 1.2)),
        Row("controller overhead share (sync)", a["overhead_s"] / a["step_s"], 1.0, "share"),
        Row("GRPO samples/s: async vs sync", b["samples_per_s"], a["samples_per_s"], "samples/s"),
        Row("GRPO tokens/s: async vs sync", b["tokens_per_s"], a["tokens_per_s"], "tokens/s"),
    ]
    for name, x in (("sync", a), ("async", b)):
        shares = ", ".join(f"{p} {100 * v:.0f} %" for p, v in x["share"].items() if v >= 0.005)
        print(f"{name}: step {x['step_s']:.3f} s = {shares}; overhead {x['overhead_s']:.4f} s; "
              f"mean reward {x['reward_mean']:.3f}")  # fmt: skip
    details = {"sync": a, "async": b, "skip": args.skip, "rounds": args.rounds}
    return report("step_anatomy", args, rows, details)


if __name__ == "__main__":
    main()
