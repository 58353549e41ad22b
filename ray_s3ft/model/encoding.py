"""Turning (prompt, response) text into model inputs, the same way everywhere.

Pretraining, SFT batches and evaluation all go through these functions so that the prompt the
model is trained on is byte for byte the prompt it is asked at generation time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token: many (Mistral's, Llama's) have none, and batches
    need one to fill their rows. It is the end-of-sequence token then; padding is masked out of
    every loss and attention, so which id fills it does not matter."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ValueError(
                f"{path}: the tokenizer has neither a pad nor an end-of-sequence token"
            )
        tok.pad_token = tok.eos_token
    return tok


def render_prompt(tokenizer, user_text: str) -> str:
    """The chat-formatted prompt, ending where the assistant's answer begins."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
    )


def encode_sft(
    tokenizer, prompts: Sequence[str], responses: Sequence[str], max_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids [B, T]``, ``attention_mask [B, T]`` and ``loss_mask [B, T]``.

    ``loss_mask[b, t] = 1`` where token t is a response token (the response plus the closing
    end-of-turn token), so the NLL is taken over response tokens only. Prompt and response are
    tokenized separately and concatenated, exactly as at generation time, where the model
    continues the prompt's ids. Nothing is cut: a cut prompt would lose its chat header and
    train on a context the model is never asked in, so a row longer than ``max_len`` is an
    error. Rows are held to the budgets where they are chosen: examples at load
    (``data_report``), S3FT targets in ``TargetSet``.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    p_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    rows, masks = [], []
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        r = r + [eos]
        if len(p) + len(r) > max_len:
            raise ValueError(
                f"SFT row {i}: prompt {len(p)} + response {len(r)} tokens (with the end-of-"
                f"sequence token) > {max_len}; rows that do not fit must be skipped before here"
            )
        rows.append(p + r)
        masks.append([0] * len(p) + [1] * len(r))
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), T), pad, dtype=torch.long)  # [B, T]
    attention = torch.zeros((len(rows), T), dtype=torch.long)  # [B, T]
    loss_mask = torch.zeros((len(rows), T), dtype=torch.float32)  # [B, T]
    for i, (row, m) in enumerate(zip(rows, masks)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        loss_mask[i, : len(row)] = torch.tensor(m, dtype=torch.float32)
    return input_ids, attention, loss_mask
