"""Greedy generation for evaluation with transformers, batched (vLLM decodes through a
``RolloutWorker``, ``evaluate._EvalEngines``).

Evaluation is greedy (temperature 0), as the S3FT paper evaluates, so its numbers do not depend on
a sampling seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def generate_greedy_hf(
    model_path: str,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 64,
    dtype: str = "float32",
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Chat-format each prompt, decode greedily with ``transformers.generate``; the response
    texts. ``on_batch(n)`` is called after each batch of n prompts (progress display)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ray_s3ft.model.encoding import load_tokenizer, render_prompt

    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    model.eval()
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    # Batches of similar length waste little compute on padding.
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
    out: list[str] = [""] * len(rendered)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [rendered[i] for i in idx],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )  # [b, T_prompt + T_new]
            new = gen[:, enc["input_ids"].shape[1] :]  # [b, T_new]
            for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                out[i] = text
            if on_batch is not None:
                on_batch(len(idx))
    return out
