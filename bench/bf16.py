"""bf16 vs fp32: SFT step time of one ``LearnerActor`` rank (DeepSpeed, ``learner.bf16``), for
full fine-tuning and for LoRA, on the same batches of a real model (default SmolLM2-135M).

Each of the four cells (fp32 | bf16) x (full | LoRA) is its own one-rank learner group, called
as the controller calls it (``scatter(train_step)``, ray.get included), on the same sequences
(the built-in task's prompts, each with several gold answers as its target so a row is about
``--tokens`` tokens). bf16 is DeepSpeed's mixed precision: bf16 weights, activations and
gradients, fp32 master weights in the optimizer. Whether bf16 can be faster depends on the CPU:
without AVX512_BF16 / AMX (``cpu_bf16`` in the result) every bf16 matmul is emulated through
fp32 and bf16 is expected to be slower.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.common import Row, parser, private_ray, report, task_prompts


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 instruction sets (empty: bf16 is emulated)."""
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        ),
        [],
    )
    return sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile"))


def _batches(args, tok) -> list:
    from ray_s3ft.workers.batches import sft_batch

    n, steps = args.batch, args.warmup + args.steps
    examples = task_prompts(n * steps * 8)
    prompts, targets, k = [], [], 0
    for _ in range(n * steps):
        prompt, target = examples[k].prompt, examples[k].gold
        k += 1
        # several gold answers as one target, until the row is about --tokens tokens
        while len(tok(prompt + target)["input_ids"]) < args.tokens - 40 and k < len(examples):
            target += " " + examples[k].gold
            k += 1
        prompts.append(prompt)
        targets.append(target)
    return [
        sft_batch(tok, prompts[i * n : (i + 1) * n], targets[i * n : (i + 1) * n], 4 * args.tokens)
        for i in range(steps)
    ]


def run_cell(args, path: str, batches: list, bf16: bool, lora: bool, logs: str) -> dict:
    from ray_s3ft.config import load_config
    from ray_s3ft.workers.batches import shard
    from ray_s3ft.workers.group import ActorGroup, Resources
    from ray_s3ft.workers.learner import LearnerActor

    cfg = load_config(
        overrides=[
            "schedule.kind=sft",
            f"learner.zero_stage={args.zero_stage}",
            f"learner.micro_batch_size={args.micro_batch}",
            f"learner.bf16={str(bf16).lower()}",
            f"model.lora.enabled={str(lora).lower()}",
            f"model.lora.r={args.lora_r}",
        ]
    )
    t = args.threads
    group = ActorGroup(
        LearnerActor, 1, name=f"learner-{'bf16' if bf16 else 'fp32'}-{'lora' if lora else 'full'}",
        log_dir=logs, resources=Resources(t, 0.0, {"OMP_NUM_THREADS": str(t)}),
        kwargs=dict(world_size=1, model_path=path, model=cfg.model, cfg=cfg.learner,
                    grpo=cfg.algorithm.grpo, lr=cfg.learner.lr, weight_decay=0.0,
                    seed=cfg.trainer.seed, threads=t),
        rank_kwargs=lambda i: {"rank": i},
    )  # fmt: skip
    try:
        addr, port = group.call_one(LearnerActor.master_address)
        trainable = group.call(LearnerActor.setup, addr, port)[0]
        seconds, losses = [], []
        for b in batches:
            started = time.perf_counter()
            stats = group.scatter(LearnerActor.train_step, shard(b, 1), mode="sft")[0]
            seconds.append(time.perf_counter() - started)
            losses.append(stats.loss)
        timed = seconds[args.warmup :]
        return {
            "median_s": statistics.median(timed),
            "seconds": timed,
            "losses": losses,
            "trainable_params": trainable,
        }
    finally:
        group.shutdown()


def main(argv=None) -> dict:
    from transformers import AutoTokenizer

    from ray_s3ft.model.paths import resolve_model_path

    ap = parser("bf16", __doc__)
    ap.add_argument("--model", default="smollm2-135m", help="model directory or known name")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--tokens", type=int, default=200, help="about this many tokens per row")
    ap.add_argument("--micro-batch", type=int, default=8, help="learner.micro_batch_size")
    ap.add_argument("--zero-stage", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the rank")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per cell")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.batch, args.tokens, args.micro_batch = "builtin", 2, 64, 2
        args.warmup, args.steps, args.threads = 0, 1, 1
    path = resolve_model_path(args.model)
    batches = _batches(args, AutoTokenizer.from_pretrained(path))
    cells = {}
    with private_ray() as logs:
        for lora in (False, True):
            for bf16 in (False, True):
                name = f"{'bf16' if bf16 else 'fp32'}_{'lora' if lora else 'full'}"
                cells[name] = run_cell(args, path, batches, bf16, lora, logs)
                print(f"{name}: {cells[name]['median_s']:.3f} s/step", flush=True)
    r = args.lora_r
    rows = [
        Row("full fine-tuning: bf16 vs fp32", cells["bf16_full"]["median_s"],
            cells["fp32_full"]["median_s"], "s/step"),
        Row(f"LoRA r={r}: bf16 vs fp32", cells["bf16_lora"]["median_s"],
            cells["fp32_lora"]["median_s"], "s/step"),
        Row(f"LoRA r={r} vs full fine-tuning (fp32)", cells["fp32_lora"]["median_s"],
            cells["fp32_full"]["median_s"], "s/step"),
        Row(f"LoRA r={r} vs full fine-tuning (bf16)", cells["bf16_lora"]["median_s"],
            cells["bf16_full"]["median_s"], "s/step"),
    ]  # fmt: skip
    details = {
        "cells": cells,
        "model": str(args.model),
        "cpu_bf16": cpu_bf16_flags(),
        "tokens_per_step": [int(b.attention_mask.sum()) for b in batches[args.warmup :]],
        "response_tokens_per_step": [int(b.global_tokens) for b in batches[args.warmup :]],
    }
    return report("bf16", args, rows, details)


if __name__ == "__main__":
    main()
