"""Training batches: SFT batches from (prompt, target) text, GRPO batches from sampled token ids.

The controller builds a step's whole batch here, then ``shard`` slices it per learner rank before
anything is sent (each rank receives only its rows). ``global_tokens`` is counted on the whole
batch, so every rank normalises by the same number.

Position convention (``TrainBatch``): ``loss_mask[b, t] = 1`` when token t is a response token;
the learner predicts token t from positions < t, so it reads ``loss_mask[:, 1:]``.
``rollout_logprobs[b, t]`` is the engine's log p of token t, aligned the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ray_s3ft.workers.types import Generation, TrainBatch


def sft_batch(
    tokenizer, prompts: Sequence[str], targets: Sequence[str], max_len: int
) -> TrainBatch:
    from ray_s3ft.model.encoding import encode_sft

    input_ids, attention, loss_mask = encode_sft(tokenizer, prompts, targets, max_len)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        loss_mask=loss_mask,
        global_tokens=float(loss_mask[:, 1:].sum()),
    )


def grpo_batch(
    generations: Sequence[Generation],
    advantages: torch.Tensor,
    pad_id: int,
    max_new_tokens: int,
) -> TrainBatch:
    """Rows = prompt ids + sampled ids, exactly as generated (no re-tokenisation)."""
    rows = [g.prompt_ids + g.token_ids for g in generations]
    T = max(len(r) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # [B, T]
    attention = torch.zeros((B, T), dtype=torch.long)  # [B, T]
    loss_mask = torch.zeros((B, T), dtype=torch.float32)  # [B, T]
    engine_logp = torch.zeros((B, T), dtype=torch.float32)  # [B, T]
    for i, (g, row) in enumerate(zip(generations, rows, strict=True)):
        p, n = len(g.prompt_ids), len(g.token_ids)
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        loss_mask[i, p : p + n] = 1.0
        engine_logp[i, p : p + n] = torch.tensor(g.logprobs, dtype=torch.float32)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        loss_mask=loss_mask,
        global_tokens=float(loss_mask.sum()),
        advantages=advantages.float(),
        rollout_logprobs=engine_logp,
        max_new_tokens=max_new_tokens,
    )


def shard(batch: TrainBatch, parts: int) -> list[TrainBatch]:
    """``parts`` equal contiguous row slices (the config guarantees divisibility)."""
    B = batch.num_sequences
    if B % parts:
        raise ValueError(f"a batch of {B} sequences does not split over {parts} ranks")
    size = B // parts

    def rows(t: torch.Tensor | None, i: int):
        return None if t is None else t[i * size : (i + 1) * size].clone()

    return [
        TrainBatch(
            input_ids=rows(batch.input_ids, i),
            attention_mask=rows(batch.attention_mask, i),
            loss_mask=rows(batch.loss_mask, i),
            global_tokens=batch.global_tokens,
            advantages=rows(batch.advantages, i),
            rollout_logprobs=rows(batch.rollout_logprobs, i),
            max_new_tokens=batch.max_new_tokens,
        )
        for i in range(parts)
    ]
