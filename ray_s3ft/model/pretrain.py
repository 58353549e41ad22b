"""Pretrain the built-in base model from a seed on the CPU (2400 steps: about 16 minutes on the
two threads of a 2-core machine).

    ray-s3ft build-model --out ray_s3ft/assets/tiny-arith   # or python -m ray_s3ft.model.pretrain

The result is shipped inside the package (``ray_s3ft/assets/tiny-arith``, a few MB) so a default
run never waits for it; this script is how it was made and how to remake it. The stream of
training pairs is drawn fresh every step from ``ray_s3ft.tasks.builtin.pretrain_pair``, so the
model never sees the same problem twice and the fine-tuning splits are unlikely to have been seen.

The step budget is deliberately small: the point is a base model that solves a fair part of the
task (not all of it) in its own style, which is the situation S3FT is designed for.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from ray_s3ft.model.encoding import encode_sft
from ray_s3ft.model.tiny import MAX_TOKENS, model_config, train_tokenizer
from ray_s3ft.tasks.builtin import pretrain_pair

# The settings the shipped model was built with. Float results depend on the thread count,
# so a bit-for-bit rebuild needs threads=2 too.
DEFAULT_STEPS = 2400
DEFAULT_THREADS = 2

# Batches are drawn POOL at a time and sorted by length, so padding is a few tokens per row.
POOL = 8


def _lr(step: int, peak: float, warmup: int) -> float:
    # Linear warm-up, then constant: any prefix of a run is itself a shorter run, so the
    # snapshots of one long run (--save-every) show what each step budget would give.
    return peak * min(1.0, (step + 1) / warmup)


def _save(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def pretrain(
    out_dir: str | Path,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    hidden: int = 128,
    layers: int = 4,
    log_every: int = 50,
    threads: int | None = DEFAULT_THREADS,
    save_every: int | None = None,
) -> dict:
    """Build the tokenizer and model, train, save in Hugging Face format; returns the summary."""
    from transformers import LlamaForCausalLM

    from ray_s3ft.algo.losses import masked_nll, token_logprobs

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(f"pretrain:{seed}")
    tokenizer = train_tokenizer(
        p + "\n" + r
        for p, r in (pretrain_pair(random.Random(f"tok:{seed}:{i}")) for i in range(4000))
    )
    model = LlamaForCausalLM(model_config(tokenizer, hidden=hidden, layers=layers))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = 50

    started, pool, history = time.perf_counter(), [], []
    model.train()
    for step in range(steps):
        if not pool:
            pairs = sorted(
                (pretrain_pair(rng) for _ in range(POOL * batch_size)),
                key=lambda pr: len(pr[0]) + len(pr[1]),
            )
            pool = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
            rng.shuffle(pool)
        batch = pool.pop()
        ids, attn, loss_mask = encode_sft(
            tokenizer, [p for p, _ in batch], [r for _, r in batch], MAX_TOKENS
        )
        logits = model(input_ids=ids, attention_mask=attn).logits  # [B, T, V]
        logp = token_logprobs(logits[:, :-1], ids[:, 1:])  # [B, T-1]
        loss = masked_nll(logp, loss_mask[:, 1:])
        for group in opt.param_groups:
            group["lr"] = _lr(step, lr, warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = sum(history[-log_every:]) / len(history[-log_every:])
            elapsed = time.perf_counter() - started
            print(
                f"pretrain step {step + 1}/{steps}  loss {recent:.4f}  {elapsed:.0f}s", flush=True
            )
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            _save(model, tokenizer, Path(out_dir) / f"step_{step + 1}")

    out = Path(out_dir)
    _save(model, tokenizer, out)
    summary = {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "hidden": hidden,
        "layers": layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": sum(history[-log_every:]) / len(history[-log_every:]),
        "wall_s": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ray-s3ft build-model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", required=True, help="directory to write the model to")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"torch CPU threads (default: {DEFAULT_THREADS}, what the shipped model used)",
    )
    ap.add_argument("--save-every", type=int, default=None, help="also save snapshots step_N/")
    args = ap.parse_args(argv)
    summary = pretrain(
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        save_every=args.save_every,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
