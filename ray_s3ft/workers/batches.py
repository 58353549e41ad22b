"""Training batches: SFT batches from (prompt, target) text, GRPO batches from sampled token ids.

The controller builds a step's whole batch here, then ``shard`` slices it per learner rank before
anything is sent (each rank receives only its rows). ``global_tokens`` is counted on the whole
batch, so every rank normalises by the same number.

Position convention (``TrainBatch``): ``loss_mask[b, t] = 1`` when token t is a response token;
the learner predicts token t from positions < t, so it reads ``loss_mask[:, 1:]``.
``rollout_logprobs[b, t]`` is the engine's log p of token t, aligned the same way: the
logprob of the distribution it sampled from (temperature applied, ``workers/rollout.py``), which
the learner reproduces from ``logits / temperature``.
"""

from __future__ import annotations

import dataclasses
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
    temperature: float = 1.0,
    weights: torch.Tensor | None = None,
) -> TrainBatch:
    """Rows = prompt ids + sampled ids, exactly as generated (no re-tokenisation).
    ``temperature``: the one the generations were sampled at; the learner scores logits / T.
    Greedy generations (T = 0) have no sampling distribution to train on: refused.
    ``weights`` [B]: each row's loss weight, its response tokens' ``loss_mask`` value (0: left
    out of the loss and of ``global_tokens``; ``algo.overlong.loss_weights``); None: all 1."""
    if not temperature > 0:
        raise ValueError(
            f"GRPO trains on sampled rollouts: temperature must be > 0, got {temperature}"
        )
    rows = [g.prompt_ids + g.token_ids for g in generations]
    T = max(len(r) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # [B, T]
    attention = torch.zeros((B, T), dtype=torch.long)  # [B, T]
    loss_mask = torch.zeros((B, T), dtype=torch.float32)  # [B, T]
    engine_logp = torch.zeros((B, T), dtype=torch.float32)  # [B, T]
    w = torch.ones(B) if weights is None else weights.float()  # [B]
    for i, (g, row) in enumerate(zip(generations, rows, strict=True)):
        p, n = len(g.prompt_ids), len(g.token_ids)
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        loss_mask[i, p : p + n] = w[i]
        engine_logp[i, p : p + n] = torch.tensor(g.logprobs, dtype=torch.float32)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        loss_mask=loss_mask,
        global_tokens=float(loss_mask.sum()),
        advantages=advantages.float(),
        rollout_logprobs=engine_logp,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
    )


def take_rows(batch: TrainBatch, rows: slice) -> TrainBatch:
    """Rows ``rows`` of a right-padded batch, cut to the longest of them: the columns that are
    padding in every one of these rows are dropped (causal attention never reads them).
    Views, not copies."""
    width = max(int(batch.attention_mask[rows].sum(1).max()), 1)

    def cut(t: torch.Tensor | None):
        return None if t is None else t[rows, :width]

    return dataclasses.replace(
        batch,
        input_ids=cut(batch.input_ids),
        attention_mask=cut(batch.attention_mask),
        loss_mask=cut(batch.loss_mask),
        advantages=None if batch.advantages is None else batch.advantages[rows],
        rollout_logprobs=cut(batch.rollout_logprobs),
    )


def shard(batch: TrainBatch, parts: int, by_length: bool = True) -> list[TrainBatch]:
    """``parts`` equal row slices, each cut to its own longest row (``take_rows``).

    ``by_length``: rows are first ordered by length, longest first, so a shard (and each
    micro-batch of it) holds sequences of similar length and carries little padding. The
    step's loss is a sum normalised by the global token count, so the order changes nothing
    but the summation order."""
    B = batch.num_sequences
    if B % parts:
        raise ValueError(f"a batch of {B} sequences does not split over {parts} ranks")
    size = B // parts
    if by_length:
        order = torch.argsort(batch.attention_mask.sum(1), descending=True, stable=True)
        batch = dataclasses.replace(
            batch,
            input_ids=batch.input_ids[order],
            attention_mask=batch.attention_mask[order],
            loss_mask=batch.loss_mask[order],
            advantages=None if batch.advantages is None else batch.advantages[order],
            rollout_logprobs=(
                None if batch.rollout_logprobs is None else batch.rollout_logprobs[order]
            ),
        )
    out = []
    for i in range(parts):
        part = take_rows(batch, slice(i * size, (i + 1) * size))
        # copies: a view would ship its whole parent tensor to the rank
        out.append(
            dataclasses.replace(
                part,
                **{
                    f.name: getattr(part, f.name).clone()
                    for f in dataclasses.fields(part)
                    if isinstance(getattr(part, f.name), torch.Tensor)
                },
            )
        )
    return out
