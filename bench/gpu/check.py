"""GPU check: the learner's SFT and GRPO steps and the ``hf`` engine's decode rate on models of
Qwen2.5-0.5B's and -1.5B's shape, in one process, without Ray or vLLM (``bench/gpu/README.md``).

Each model is built from its config with random weights and saved to a temporary directory
(no download: the GPU machine is air-gapped); batches are random token ids of ``--seq-len``
tokens, the second half of each row its response, so no tokenizer is needed. Each cell, (model)
x (LoRA r = 8 | full) x (gradient checkpointing off | on), is one ``LearnerActor`` in a local
``ActorGroup`` (DeepSpeed ZeRO-2, bf16 mixed precision: fp32 master weights, bf16 compute)
called as the controller calls it; it runs SFT steps, then GRPO steps (the KL reference's
forward included) on the same engine.

Figures per cell and mode: tokens/s (every token of the batch, prompt included), peak memory
(``torch.cuda.max_memory_allocated`` over the mode's steps; on CPU the process's peak RSS) and
MFU. Model FLOPs of a step: 6 x (the matmul parameters a token passes: every linear layer and
the LM head) per token for full training, 4 x for LoRA (frozen weights get no weight gradient),
plus attention (``bench.bf16.step_flops``); GRPO adds the reference's forward, 2 x per token
plus a third of attention. Recomputation under gradient checkpointing is not model work, so it
lowers MFU. The achieved FLOP/s are set against the accelerator's dense bf16 peak
(``--peak-tflops``; H100 SXM: 989) and against a bare bf16 matmul measured in the same run.
The decode row is ``HFEngine.generate`` on the smaller model, a batch of ``--decode-batch``
prompts, sampling; its rate counts the new tokens.

``--smoke`` runs the same code on a tiny Qwen2-shaped model for a step or two (the CPU test).
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

from bench.bf16 import model_shapes, step_flops
from bench.common import Row, parser, report

# Qwen2ForCausalLM shapes (the models' config.json): Qwen2.5-0.5B ties its embeddings, 1.5B not
SHAPES = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, intermediate_size=8960, tie_word_embeddings=False),
    "smoke": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=128, tie_word_embeddings=True),
}  # fmt: skip
VOCAB = {"0.5b": 151936, "1.5b": 151936, "smoke": 512}
# dense bf16 peaks (NVIDIA's datasheets); the first name the device's contains wins
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def qwen2_config(name: str):
    """No end-of-sequence id: a decode runs its whole budget."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=VOCAB[name], max_position_embeddings=32768, rope_theta=1e6,
        rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=None, **SHAPES[name],
    )  # fmt: skip


def build_model(name: str, root: Path) -> str:
    """A randomly initialised Qwen2 of ``name``'s shape, saved in bf16 under ``root``."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # 1.5B: faster there
        model = Qwen2ForCausalLM(qwen2_config(name)).to(torch.bfloat16)
    path = root / name
    model.save_pretrained(path)
    return str(path)


def batches(args, vocab: int, mode: str, n: int) -> list:
    """``n`` random batches of ``args.batch`` full rows of ``args.seq_len`` tokens."""
    import torch

    from ray_s3ft.workers.batches import grpo_batch
    from ray_s3ft.workers.types import Generation, TrainBatch

    g = torch.Generator().manual_seed(len(mode))
    prompt = args.seq_len // 2
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (args.batch, args.seq_len), generator=g)
        if mode == "sft":
            mask = torch.zeros(args.batch, args.seq_len)
            mask[:, prompt:] = 1.0
            out.append(TrainBatch(ids, torch.ones_like(ids), mask, float(mask[:, 1:].sum())))
            continue
        gens = [
            Generation(row[:prompt].tolist(), row[prompt:].tolist(), "",
                       [-math.log(vocab)] * (args.seq_len - prompt), False)
            for row in ids
        ]  # fmt: skip
        adv = torch.randn(args.batch, generator=g)
        out.append(grpo_batch(gens, adv, 0, args.seq_len - prompt, temperature=1.0))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_memory_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def allocated_gib() -> float | None:
    import torch

    return torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else None


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_cell(args, path: str, vocab: int, lora: bool, checkpointing: bool) -> dict:
    """One learner on ``path``: SFT steps, then GRPO steps; per mode its times and figures."""
    from ray_s3ft.config import GRPOConfig, LearnerConfig, LoraConfig, ModelConfig
    from ray_s3ft.workers.batches import shard
    from ray_s3ft.workers.group import ActorGroup
    from ray_s3ft.workers.learner import LearnerActor

    model = ModelConfig(
        path=path,
        dtype=args.dtype,
        max_model_len=args.seq_len,
        lora=LoraConfig(enabled=lora, r=8, alpha=16, dropout=0.0),
    )
    cfg = LearnerConfig(
        zero_stage=2,
        bf16=args.bf16,
        micro_batch_size=args.micro_batch,
        gradient_checkpointing=checkpointing,
    )
    group = ActorGroup(
        LearnerActor, 1, name="learner", local=True,
        kwargs=dict(world_size=1, model_path=path, model=model, cfg=cfg, grpo=GRPOConfig(),
                    lr=1e-5, grpo_lr=1e-6, weight_decay=0.0, seed=0,
                    threads=os.cpu_count() or 1),
        rank_kwargs=lambda i: {"rank": i},
    )  # fmt: skip
    out = {}
    try:
        trainable = group.call(LearnerActor.setup, "127.0.0.1", free_port())[0]
        out["setup_memory_gib"] = allocated_gib()  # weights, optimizer state, the reference
        shapes, sizes = model_shapes(path)
        for mode in ("sft", "grpo"):
            steps = batches(args, vocab, mode, args.warmup + args.steps)
            peak_memory_reset()
            seconds, losses = [], []
            for b in steps:
                sync()
                started = time.perf_counter()
                stats = group.scatter(LearnerActor.train_step, shard(b, 1), mode=mode)[0]
                sync()
                seconds.append(time.perf_counter() - started)
                losses.append(stats.loss)
            median = statistics.median(seconds[args.warmup :])
            lengths = [args.seq_len] * args.batch
            flops = step_flops(shapes, sizes, lengths, lora)
            if mode == "grpo":  # the reference's forward: a third of a full step's work
                flops += step_flops(shapes, sizes, lengths, lora=False) / 3
            out[mode] = {
                "seconds": seconds[args.warmup :],
                "losses": losses,
                "tokens_per_s": args.batch * args.seq_len / median,
                "peak_memory_gib": peak_memory_gib(),
                "step_flops": flops,
                "flops_per_s": flops / median,
            }
        out["trainable_params"] = trainable
    finally:
        group.shutdown()
        gc.collect()
        peak_memory_reset()
    return out


def bare_matmul(n: int, repeats: int = 10) -> float:
    """FLOP/s of a bare n x n x n matmul in bf16 on the device (CPU: float32, bf16 there is
    often emulated)."""
    import torch

    cuda = torch.cuda.is_available()
    dt = torch.bfloat16 if cuda else torch.float32
    dev = "cuda" if cuda else "cpu"
    a, b = torch.randn(n, n, dtype=dt, device=dev), torch.randn(n, n, dtype=dt, device=dev)
    for _ in range(3):
        a @ b
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2.0 * n**3 * repeats / (time.perf_counter() - started)


def decode_rate(args, path: str, vocab: int) -> dict:
    """``HFEngine.generate`` on ``args.decode_batch`` random prompts: new tokens per second."""
    import torch

    from ray_s3ft.config import RolloutConfig
    from ray_s3ft.workers.engines import HFEngine
    from ray_s3ft.workers.types import Sampling

    class Ids:  # the engine needs the pad and end ids and decode; the ids are random
        pad_token_id, eos_token_id = 0, None

        def decode(self, ids, skip_special_tokens=True):
            return ""

    cfg = RolloutConfig(backend="hf", dtype=args.dtype)
    engine = HFEngine(path, cfg, args.seq_len, False, False, batch_size=args.decode_batch)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, vocab, (args.decode_batch, args.decode_prompt), generator=g)
    s = Sampling(n=1, temperature=1.0, max_new_tokens=args.decode_tokens)
    engine.generate(prompts[:, :8].tolist(), Sampling(max_new_tokens=2), Ids(), None)  # warm-up
    sync()
    started = time.perf_counter()
    gens = engine.generate(prompts.tolist(), s, Ids(), None)
    sync()
    seconds = time.perf_counter() - started
    tokens = sum(len(x.token_ids) for x in gens)
    device = str(next(engine.model.parameters()).device)
    del engine
    gc.collect()
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "batch": args.decode_batch, "engine_device": device}  # fmt: skip


def main(argv=None) -> dict:
    import torch
    import transformers

    ap = parser("gpu.check", __doc__)
    ap.add_argument("--models", default="0.5b,1.5b", help=f"of {sorted(SHAPES)}")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    ap.add_argument("--decode-batch", type=int, default=64)
    ap.add_argument("--decode-prompt", type=int, default=64, help="prompt tokens")
    ap.add_argument("--decode-tokens", type=int, default=64, help="new tokens per prompt")
    ap.add_argument("--matmul", type=int, default=8192, help="bare matmul size")
    ap.add_argument("--peak-tflops", type=float, default=None, help="default: by device name")
    args = ap.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()  # a bar per load, 16 loads: noise in logs
    cuda = torch.cuda.is_available()
    if args.smoke:
        args.models, args.batch, args.micro_batch, args.seq_len = "smoke", 4, 2, 32
        args.warmup, args.steps, args.matmul = 0, 1, 256
        args.decode_batch, args.decode_prompt, args.decode_tokens = 4, 8, 4
    # bf16 compute where the device has it; CPUs without AVX512_BF16 emulate it, slowly
    args.bf16 = cuda
    args.dtype = "bfloat16" if cuda else "float32"
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    if args.peak_tflops is None:
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    names = args.models.split(",")
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    print(f"device: {device}; models: {names}", flush=True)
    matmul = bare_matmul(args.matmul)
    print(f"bare matmul {args.matmul}^3: {matmul / 1e12:.1f} TFLOP/s", flush=True)
    cells, rows, paths = {}, [], {}
    for name in names:
        path = paths[name] = build_model(name, root)
        for lora in (True, False):
            for ckpt in (False, True):
                key = f"{name}/{'lora8' if lora else 'full'}/{'ckpt' if ckpt else 'no-ckpt'}"
                cell = cells[key] = run_cell(args, path, VOCAB[name], lora, ckpt)
                for mode in ("sft", "grpo"):
                    c = cell[mode]
                    print(f"{key}/{mode}: {c['tokens_per_s']:.0f} tokens/s, "
                          f"{c['peak_memory_gib']:.2f} GiB, loss {c['losses'][-1]:.4f}",
                          flush=True)  # fmt: skip
                    rows.append(Row(f"{key}/{mode}: FLOP/s vs bare matmul", c["flops_per_s"],
                                    matmul, "FLOP/s"))  # fmt: skip
                    if args.peak_tflops:
                        rows.append(Row(f"{key}/{mode}: MFU (vs {args.peak_tflops:g} TFLOP/s)",
                                        c["flops_per_s"], args.peak_tflops * 1e12, "FLOP/s"))  # fmt: skip
                # what was measured survives a run cut short by its time limit
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.with_suffix(".partial.json").write_text(json.dumps(cells, indent=1))
    # last: on a GPU machine the hf engine may decode on the CPU (its model is never moved)
    decode = decode_rate(args, paths[names[0]], VOCAB[names[0]])
    print(f"hf decode {names[0]} x{args.decode_batch} on {decode['engine_device']}: "
          f"{decode['tokens_per_s']:.0f} tokens/s", flush=True)  # fmt: skip
    if args.peak_tflops:
        rows.append(Row("bare matmul vs peak", matmul, args.peak_tflops * 1e12, "FLOP/s"))
    details = {"device": device, "peak_tflops": args.peak_tflops, "matmul_flops_per_s": matmul,
               "cells": cells, "decode": decode, "shapes": {n: SHAPES[n] for n in names}}  # fmt: skip
    print_cells(cells, matmul, args.peak_tflops)
    return report("gpu.check", args, rows, details)


def print_cells(cells: dict, matmul: float, peak_tflops: float | None) -> None:
    """tokens/s, peak memory, model TFLOP/s, MFU (vs peak) and vs the bare matmul, losses."""
    print(f"\n{'cell':26} {'tokens/s':>9} {'peak GiB':>9} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'/matmul':>7}  losses")  # fmt: skip
    for key, cell in cells.items():
        for mode in ("sft", "grpo"):
            c = cell[mode]
            f = c["flops_per_s"]
            mfu = f"{f / (peak_tflops * 1e12):6.1%}" if peak_tflops else f"{'-':>6}"
            print(f"{key + '/' + mode:26} {c['tokens_per_s']:>9.0f} {c['peak_memory_gib']:>9.2f} "
                  f"{f / 1e12:>8.2f} {mfu} {f / matmul:>7.1%}  "
                  f"{[round(x, 4) for x in c['losses']]}")  # fmt: skip


if __name__ == "__main__":
    main()
