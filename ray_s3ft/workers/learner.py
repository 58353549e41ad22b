"""LearnerActor: one rank of the DeepSpeed engine that trains the policy.

N ranks form one torch.distributed group (gloo on CPU, nccl on GPU); the controller gives each
rank its pre-sliced share of a step's batch. ``train_step(batch, mode)`` runs an SFT or a GRPO
update and returns the step's statistics reduced over ranks, identical on every rank.

Loss normalisation under data parallelism: every micro-batch's loss is scaled by its share of
the *global* batch (tokens for SFT and DAPO, sequences for the per-sequence aggregations) and by
the world size, because DeepSpeed averages gradients over ranks. The summed gradient is then the
one a single process would get on the whole batch, however it is split (tested).

The reference policy for the KL term is a frozen copy held by each rank (small models; a large
model would get its own actor group). Under ``schedule.reference: after_warmup`` (SASR's rule,
the README's Methods section; the default for every schedule) the controller resets it to the
policy at the end of the warm-up.

Adam's state is shared by SFT and GRPO steps, or with ``learner.optimizer_state: per_mode`` kept
per mode over the same parameters (``_use_optimizer_state``): under shared state each update
carries about 1 / (1 - beta1) = 10 steps of momentum from both modes, so ``trainer.grpo_lr``
does not set the size of a GRPO update.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from ray_s3ft.config import GRPOConfig, LearnerConfig, ModelConfig
from ray_s3ft.workers.types import StepStats, TrainBatch

log = logging.getLogger(__name__)


class LearnerActor:
    def __init__(
        self,
        rank: int,
        world_size: int,
        model_path: str,
        model: ModelConfig,
        cfg: LearnerConfig,
        grpo: GRPOConfig,
        lr: float,
        weight_decay: float,
        seed: int,
        threads: int = 1,
        grpo_lr: float | None = None,
    ) -> None:
        """``lr`` for SFT steps; ``grpo_lr`` for GRPO steps (None: ``lr``). RL updates want a
        smaller step than supervised ones, and SASR interleaves both on one optimizer."""
        import torch

        torch.set_num_threads(max(1, threads))  # ranks share the node's cores
        self.rank, self.world_size, self.model_path = rank, world_size, model_path
        self.model_cfg, self.cfg, self.grpo = model, cfg, grpo
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.lr_by_mode = {"sft": lr, "grpo": lr if grpo_lr is None else grpo_lr}
        self.engine = None

    # --------------------------------------------------------------------------------- setup

    def master_address(self) -> tuple[str, int]:
        """This node's address and a free port: rank 0's answer is the group's rendezvous."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the process group and build the engine; returns the trainable parameter count."""
        import deepspeed
        import torch

        # DeepSpeed reads its rank from the environment; without these it falls back to MPI.
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",  # Ray gives each rank its own (or no) visible GPU
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        backend = self.cfg.backend
        if backend == "auto":
            backend = "nccl" if self.device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend)
        # the reference first: once HfDeepSpeedConfig exists (ZeRO-3), every from_pretrained
        # in this process partitions its weights, and the reference has no engine to gather them
        self.reference = self._load_reference()
        return self._build_engine()

    def reset(
        self, seed: int, cfg: LearnerConfig | None = None, grpo: GRPOConfig | None = None
    ) -> int:
        """Start over from the base model: fresh weights, optimizer state and KL reference, in
        the same process group (``ray-s3ft compare`` runs a grid of cells on one set of actors).
        The new engine loads the base weights, and the reference copies them from it. ``cfg`` /
        ``grpo``: the next cell's settings (``optimizer_state``, the GRPO loss); what the model
        and the process group were built with must stay. Collective."""
        import dataclasses
        import gc

        if cfg is not None:
            changed = [
                f.name
                for f in dataclasses.fields(cfg)
                if f.name != "optimizer_state" and getattr(cfg, f.name) != getattr(self.cfg, f.name)
            ]
            if changed:
                raise ValueError(f"a reset cannot change learner.{', learner.'.join(changed)}")
            self.cfg = cfg
        if grpo is not None:
            self.grpo = grpo
        self.engine = None
        gc.collect()
        self.seed = seed
        params = self._build_engine()
        self.reset_reference()
        return params

    def _build_engine(self) -> int:
        import deepspeed
        import torch

        torch.manual_seed(self.seed)
        ds_config = self._ds_config()
        model = self._load_model(ds_config)
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = None
        if not self.cfg.offload_optimizer:  # else DeepSpeed builds its CPU Adam from ds_config
            optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=optimizer, config=ds_config
        )
        self.steps = 0
        # learner.optimizer_state per_mode: the mode whose Adam state the optimizer holds, the
        # other modes' states, and the state a mode's first step starts from
        self.opt_mode: str | None = None
        self.opt_states: dict = {}
        self.fresh_opt_state = (  # not held otherwise: a bf16 ZeRO-0 one is a full copy
            _copy_state(self._base_optimizer().state)
            if self.cfg.optimizer_state == "per_mode"
            else None
        )
        return sum(p.numel() for p in params)

    def _ds_config(self) -> dict:
        zero: dict = {"stage": self.cfg.zero_stage}
        if self.cfg.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        config = {
            "train_micro_batch_size_per_gpu": self.cfg.micro_batch_size,
            "gradient_accumulation_steps": 1,  # set per step: SFT and GRPO batches may differ
            "gradient_clipping": self.cfg.grad_clip,
            "zero_optimization": zero,
            "bf16": {"enabled": self.cfg.bf16},
            "zero_allow_untested_optimizer": True,  # torch AdamW: no extension to compile
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if self.cfg.offload_optimizer:
            config["optimizer"] = {
                "type": "AdamW",
                "params": {"lr": self.lr, "weight_decay": self.weight_decay},
            }
        return config

    def _load_model(self, ds_config: dict):
        import torch
        from transformers import AutoModelForCausalLM

        if self.cfg.zero_stage == 3:
            # ZeRO-3 partitions weights as they load; HfDeepSpeedConfig must exist (and stay
            # referenced) before from_pretrained, or every rank materialises the whole model.
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(
                {**ds_config, "train_batch_size": self.cfg.micro_batch_size * self.world_size}
            )
        dtype = torch.float32 if self.cfg.bf16 else getattr(torch, self.model_cfg.dtype)
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=dtype, trust_remote_code=self.model_cfg.trust_remote_code
        )
        lora = self.model_cfg.lora
        if lora.enabled:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules),
                    task_type="CAUSAL_LM",
                ),
            )
        return model

    def _load_reference(self):
        import torch
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(
            self.model_path,
            dtype=getattr(torch, self.model_cfg.dtype),
            trust_remote_code=self.model_cfg.trust_remote_code,
        ).to(self.device)
        ref.eval().requires_grad_(False)
        return ref

    # ---------------------------------------------------------------------------------- steps

    def _logprobs(self, module, batch: TrainBatch, rows: slice, temperature: float = 1.0):
        """Per-token logprobs of each next token under ``logits / temperature``, and those
        tempered logits: [b, T-1], [b, T-1, V]. GRPO passes the rollout's temperature (the
        distribution the engine sampled from and reported logprobs of); SFT 1.0."""
        from ray_s3ft.algo.losses import token_logprobs

        if not temperature > 0:  # greedy rollouts are never trained on (config_checks, batches)
            raise ValueError(f"logprobs need a sampling temperature > 0, got {temperature}")
        ids = batch.input_ids[rows].to(self.device)  # [b, T]
        attn = batch.attention_mask[rows].to(self.device)  # [b, T]
        logits = module(input_ids=ids, attention_mask=attn).logits[:, :-1]  # [b, T-1, V]
        if temperature != 1.0:
            logits = logits.float() / temperature  # fp32 first: bf16 logits / T round again
        return token_logprobs(logits, ids[:, 1:]), logits  # [b, T-1], [b, T-1, V]

    def train_step(self, batch: TrainBatch, mode: str) -> StepStats:
        """One SFT or GRPO update on this rank's share of the batch (``mode`` "sft" or "grpo").

        SFT: one optimizer step. GRPO: ``algorithm.grpo.updates_per_batch`` (k) optimizer steps,
        one per mini-batch (this rank's rows cut into k slices); with k > 1 one pass scores
        the whole batch with the policy that sampled it first (pi_old, eval mode), so the
        ratio pi / pi_old moves off 1 from the second mini-batch on and the clip acts. The
        returned losses and grad norm are means over the k updates, the token statistics
        (KL, entropy, clip share) means over the batch's tokens."""
        import torch

        from ray_s3ft.batches import take_rows

        if mode not in ("sft", "grpo"):
            raise ValueError(f"mode must be 'sft' or 'grpo', got {mode!r}")
        engine = self.engine
        temp = batch.temperature if mode == "grpo" else 1.0  # SFT: plain NLL
        self._use_optimizer_state(mode)
        for group in engine.optimizer.param_groups:
            group["lr"] = self.lr_by_mode[mode]
        k = self.grpo.updates_per_batch if mode == "grpo" else 1
        if batch.num_sequences % k:
            raise ValueError(f"{batch.num_sequences} rows do not cut into {k} mini-batches")
        old = self._old_logprobs(batch, temp) if k > 1 else None  # [B, T-1] pi_old
        engine.train()
        # sums over this rank: objective, kl*tok, entropy*tok, tokens, seqs, pg, clip*tok, |dlogp|,
        # IS weight*tok, IS capped tokens, |ratio - 1|*tok
        acc = torch.zeros(11, dtype=torch.float64)
        max_diff = torch.zeros(1, dtype=torch.float64)  # max |learner logp - engine logp|
        size, norms = batch.num_sequences // k, []
        for u in range(k):
            # every k-th row: the rows come ordered by length (``shard``), so contiguous
            # slices would give the first update the longest responses and the last the
            # shortest, and each update's own token normaliser would weigh them unequally
            rows = slice(u, None, k)
            part = batch if k == 1 else take_rows(batch, rows)
            part_old = None if old is None else old[rows]
            if k == 1:
                tokens, seqs = batch.global_tokens, batch.num_sequences * self.world_size
            else:  # this mini-batch over all ranks: the normalisers of its update
                tokens = self._all_reduce(part.loss_mask[:, 1:].sum().double()).item()
                seqs = size * self.world_size
            norms.append(self._update(part, mode, temp, part_old, tokens, seqs, acc, max_diff))
        self.steps += 1
        acc = self._all_reduce(acc)
        max_diff = self._all_reduce(max_diff, op="max")
        tok = max(acc[3].item(), 1.0)
        with_kl = mode == "grpo" or self.cfg.sft_kl
        finite = [n for n in norms if n is not None]
        return StepStats(
            loss=acc[0].item() / k,
            grad_norm=sum(finite) / len(finite) if finite else float("nan"),
            kl=acc[1].item() / tok if with_kl else float("nan"),
            entropy=acc[2].item() / tok,
            tokens=int(acc[3].item()),
            sequences=int(acc[4].item()),
            pg_loss=acc[5].item() / k,
            clip_frac=acc[6].item() / tok,
            logprob_diff=acc[7].item() / tok,
            logprob_max_diff=max_diff.item(),
            is_weight=acc[8].item() / tok if batch.is_cap is not None else 1.0,
            is_clip_frac=acc[9].item() / tok,
            updates=k,
            ratio_dev=acc[10].item() / tok,
        )

    def _old_logprobs(self, batch: TrainBatch, temperature: float):
        """pi_old: the current policy's logprobs of the whole batch before its updates, in eval
        mode (no dropout) and without a graph: [B, T-1], zero past each row's length. With
        LoRA dropout the first update's ratio is then pi(dropout) / pi_old, not exactly 1."""
        import torch

        from ray_s3ft.batches import take_rows

        out = torch.zeros(batch.input_ids.shape[0], batch.input_ids.shape[1] - 1)
        micro = self.cfg.micro_batch_size
        self.engine.eval()
        with torch.no_grad():
            for start in range(0, batch.num_sequences, micro):
                mb = take_rows(batch, slice(start, start + micro))
                logp, _ = self._logprobs(self.engine.module, mb, slice(None), temperature)
                out[start : start + micro, : logp.shape[1]] = logp.float().cpu()
        return out

    def _update(self, batch, mode, temp, old, global_tokens, global_seqs, acc, max_diff):
        """One optimizer step on ``batch`` (all of this rank's rows of one update), in
        micro-batches; ``global_tokens`` / ``global_seqs``: the update's normalisers over all
        ranks. Adds to ``acc`` / ``max_diff``; returns the step's grad norm (None: unknown)."""
        import torch

        from ray_s3ft.algo.grpo import grpo_loss, kl_k3
        from ray_s3ft.algo.losses import entropy_from_logits, masked_nll
        from ray_s3ft.batches import take_rows

        engine, micro = self.engine, self.cfg.micro_batch_size
        with_kl = mode == "grpo" or self.cfg.sft_kl  # SFT steps: KL only as a metric
        n_micro = math.ceil(batch.num_sequences / micro)
        engine.set_train_batch_size(micro * n_micro * self.world_size)
        grad_norm = None
        for i in range(n_micro):
            mb = take_rows(batch, slice(i * micro, (i + 1) * micro))  # its own length
            mask = mb.loss_mask[:, 1:].to(self.device)  # [b, T-1]
            logp, logits = self._logprobs(engine, mb, slice(None), temp)
            with torch.no_grad():
                ref_logp = None  # the reference forward costs a third of an SFT step
                if with_kl:  # the reference at the same temperature: KL between sampling policies
                    ref_logp, _ = self._logprobs(self.reference, mb, slice(None), temp)
                kl_tok = kl_k3(logp, ref_logp) * mask if with_kl else torch.zeros(1)
                ent = entropy_from_logits(logits.detach(), mask) * mask.sum()
            tokens = mask.sum()
            if mode == "sft":
                loss = masked_nll(logp, mask, normalizer=global_tokens)  # share of global
                pg = clip = 0.0
            else:
                # pi_old: the policy before this step's first update (one update: pi_theta)
                if old is None:
                    old_logp = logp.detach()
                else:
                    old_logp = old[i * micro : (i + 1) * micro, : logp.shape[1]].to(self.device)
                weights = None
                if batch.is_cap is not None:  # samples of an older policy (async rollout)
                    behaviour = mb.rollout_logprobs[:, 1:].to(self.device)
                    raw = torch.exp(old_logp - behaviour)  # pi_old / pi_behaviour
                    weights = raw.clamp(max=batch.is_cap)  # [b, T-1]
                    acc[8] += (weights * mask).sum().item()
                    acc[9] += ((raw > batch.is_cap).float() * mask).sum().item()
                out = grpo_loss(
                    logp,
                    old_logp,
                    mb.advantages.to(self.device),
                    mask,
                    eps_low=self.grpo.eps_low,
                    eps_high=self.grpo.eps_high,
                    beta=self.grpo.beta,
                    ref_logprobs=ref_logp,
                    agg=self.grpo.loss_agg,
                    max_len=batch.max_new_tokens,
                    is_weights=weights,
                )
                # grpo_loss averages within the micro-batch; rescale to its share of the update
                share = (
                    tokens.item() / max(global_tokens, 1.0)
                    if self.grpo.loss_agg == "dapo"
                    else mask.shape[0] / global_seqs
                )
                loss = out.loss * share
                pg, clip = out.pg_loss * share, out.clip_frac * tokens.item()
                acc[10] += out.ratio_dev * tokens.item()
                if batch.rollout_logprobs is not None:  # the engine against pi_old
                    engine_logp = mb.rollout_logprobs[:, 1:].to(self.device)
                    diff = (old_logp - engine_logp).abs() * mask  # [b, T-1]
                    acc[7] += diff.sum().item()
                    max_diff.copy_(torch.maximum(max_diff, diff.max().double().cpu()))
            engine.set_gradient_accumulation_boundary(i == n_micro - 1)
            engine.backward(loss * self.world_size, scale_wrt_gas=False)
            if i == n_micro - 1:
                grad_norm = self._stage0_grad_norm()
            engine.step()
            acc[:7] += torch.tensor(
                [
                    loss.item(),
                    kl_tok.sum().item(),
                    ent.item(),
                    tokens.item(),
                    mask.shape[0],
                    pg,
                    clip,
                ],
                dtype=torch.float64,
            )
        if grad_norm is None:
            grad_norm = engine.get_global_grad_norm()
        return None if grad_norm is None else float(grad_norm)

    # ------------------------------------------------------------------- optimizer per mode

    def _base_optimizer(self):
        """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16): it holds Adam's state,
        keyed by the parameters it updates (ZeRO: the flat fp32 partitions)."""
        opt = self.engine.optimizer
        while hasattr(opt, "optimizer"):
            opt = opt.optimizer
        return opt

    def _use_optimizer_state(self, mode: str) -> None:
        """``learner.optimizer_state: per_mode``: give the optimizer ``mode``'s Adam state (its
        moments and step count) and keep the other mode's aside. A mode's first step starts
        from the state DeepSpeed built the optimizer with. (DeepSpeed's own optimizer-state
        accessors, ``safe_get_full_optimizer_state`` and universal checkpoints, link to the
        state of the first mode that stepped; nothing here uses them.)"""
        if self.cfg.optimizer_state != "per_mode" or self.opt_mode == mode:
            return
        opt = self._base_optimizer()
        if self.opt_mode is not None:  # before the first step the optimizer holds a fresh one
            self.opt_states[self.opt_mode] = opt.state
            held = self.opt_states.pop(mode, None)
            opt.state = held if held is not None else _copy_state(self.fresh_opt_state)
        self.opt_mode = mode

    def _mode_states(self) -> dict:
        """The per-mode bookkeeping for a checkpoint: which mode's state the optimizer holds
        (DeepSpeed saves that one) and the others, keyed by parameter position."""
        params = [p for g in self._base_optimizer().param_groups for p in g["params"]]
        index = {id(p): i for i, p in enumerate(params)}
        return {
            "active": self.opt_mode,
            "inactive": {
                m: {index[id(p)]: dict(s) for p, s in st.items()}
                for m, st in self.opt_states.items()
            },
        }

    def _load_mode_states(self, saved: dict) -> None:
        from collections import defaultdict

        params = [p for g in self._base_optimizer().param_groups for p in g["params"]]
        self.opt_mode = saved["active"]
        self.opt_states = {
            m: defaultdict(dict, {params[int(i)]: s for i, s in st.items()})
            for m, st in saved["inactive"].items()
        }

    def _stage0_grad_norm(self) -> float | None:
        """ZeRO-0 with a torch optimizer reports no norm: after the boundary backward the grads
        are already averaged over ranks, so take it here, before step() clips them.

        bf16 (any stage) steps through a DeepSpeed wrapper that computes the global norm of the
        whole step's gradient itself, before clipping, over the gradients it accumulated: at
        ZeRO-0 in DeepSpeed 0.19 the bf16 ``FP16_UnfusedOptimizer`` (gradients in the bf16
        ``p.grad``), with fp32 accumulation the ``BF16_Optimizer``, whose gradients live in its
        fp32 copies while ``p.grad`` holds at most the last micro-batch. Its norm is the one to
        report (``get_global_grad_norm`` after ``step``); tested against one process."""
        if self.cfg.zero_stage != 0 or self.cfg.bf16:
            return None
        sq = sum(
            float(p.grad.double().pow(2).sum()) for p in self._trainable() if p.grad is not None
        )
        return math.sqrt(sq)

    def _trainable(self):
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    def _all_reduce(self, t, op: str = "sum"):
        import torch.distributed as dist

        t = t.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.cpu()

    def grad_probe(self, batch: TrainBatch) -> float:
        """Global L2 norm of the SFT gradient on ``batch``, without an optimizer step (SASR's
        probe). ``torch.autograd.grad`` leaves ``.grad`` and DeepSpeed's hooks untouched."""
        import torch

        from ray_s3ft.algo.losses import masked_nll
        from ray_s3ft.batches import take_rows

        if self.cfg.zero_stage == 3:
            raise RuntimeError("grad_probe needs full parameters on each rank (zero_stage <= 2)")
        params = self._trainable()
        total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        micro = self.cfg.micro_batch_size
        for start in range(0, batch.num_sequences, micro):
            mb = take_rows(batch, slice(start, start + micro))
            logp, _ = self._logprobs(self.engine.module, mb, slice(None))  # T = 1: SFT's NLL
            loss = masked_nll(logp, mb.loss_mask[:, 1:].to(self.device), batch.global_tokens)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for acc, g in zip(total, grads, strict=True):
                if g is not None:
                    acc += g.float()
        flat = self._all_reduce(torch.cat([g.flatten() for g in total]))
        # float64: a float32 norm over ~1e6 entries drifts by ~1e-4 relative, visibly off
        # DeepSpeed's own norm of the same gradient
        return float(flat.double().norm())

    def logprobs(self, batch: TrainBatch):
        """This rank's per-token logprobs of ``batch`` under the current policy at the batch's
        temperature (what a GRPO step scores): [B, T-1]."""
        import torch

        self.engine.eval()
        with torch.no_grad():
            logp, _ = self._logprobs(self.engine.module, batch, slice(None), batch.temperature)
        return logp.cpu()

    # ------------------------------------------------------------------------------- weights

    def full_state_dict(self) -> dict | None:
        """HF-named full weights for inference engines and checkpoints, on rank 0 (None on other
        ranks). Collective under ZeRO-3 (every rank must call it); LoRA adapters are merged."""
        import torch

        with self._gathered(), torch.no_grad():
            return self._hf_state() if self.rank == 0 else None

    def engine_weights(self):
        """``full_state_dict`` packed for the rollout engines (``workers/weights.py``): numpy
        views, one copy into Ray's object store. Without ZeRO-3 or LoRA they are views of the
        live parameters, not clones: Ray serialises an actor's return value before the actor
        runs its next call. Collective under ZeRO-3."""
        import torch

        from ray_s3ft.workers.weights import pack

        with self._gathered(), torch.no_grad():
            if self.rank != 0:
                return None
            live = self.cfg.zero_stage != 3 and not self.model_cfg.lora.enabled
            return pack(self._hf_state(copy=not live))

    def reset_reference(self) -> None:
        """Make the current policy the KL reference (SASR's post-warm-up reference)."""
        import torch

        with self._gathered(), torch.no_grad():
            self.reference.load_state_dict(self._hf_state(), strict=True)

    def _gathered(self):
        """Under ZeRO-3 each rank holds a slice of every weight: gather them for reading."""
        import contextlib

        if self.cfg.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        params = list(self.engine.module.parameters())
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def _hf_state(self, device: str = "cpu", copy: bool = True) -> dict:
        import torch

        module, dtype = self.engine.module, getattr(torch, self.model_cfg.dtype)
        lora = self.model_cfg.lora.enabled
        state = _lora_merged_state(module) if lora else module.state_dict()
        # copy: the result must not alias live parameters the next step overwrites (or gathered
        # ZeRO-3 buffers)
        out = {k: v.detach().to(device, dtype) for k, v in state.items()}
        return {k: v.clone() for k, v in out.items()} if copy else out

    # GPU weight sync (written against vLLM's weight-transfer API; not run on CPU machines):
    # rank 0 joins one NCCL group with every vLLM worker and broadcasts the merged HF weights.

    def nccl_connect(self, master_address: str, master_port: int, num_receivers: int) -> list:
        """Rank 0: join the broadcast group (concurrently with the engines' ``nccl_connect``).
        Returns the tensor metadata the engines need for every later receive."""
        from ray_s3ft.workers.nccl_sync import NCCLWeightSender, tensor_meta

        self._sender = NCCLWeightSender(master_address, master_port, num_receivers)
        self._sender.connect()
        with self._gathered():
            return tensor_meta(list(self._hf_state(device="meta").items()))

    def nccl_broadcast(self) -> None:
        """Send the current weights (concurrently with the engines' ``nccl_update``).
        Collective over the learner ranks under ZeRO-3."""
        import torch

        with self._gathered(), torch.no_grad():
            if self.rank == 0:
                self._sender.send(list(self._hf_state(device=str(self.device)).items()))

    # ---------------------------------------------------------------------------- checkpoints

    def save(self, ckpt_dir: str, hf_dir: str | None) -> None:
        """DeepSpeed state (optimizer included) of every rank under ``ckpt_dir``, the HF-format
        model under ``hf_dir`` (rank 0) and the reference weights. Collective. With LoRA the
        model in ``hf_dir`` has the adapters merged, and the adapters alone go next to it, in
        PEFT's format (``hf_dir/../adapter``: ``PeftModel.from_pretrained(base, that)``)."""
        import torch
        from safetensors.torch import save_file

        self.engine.save_checkpoint(ckpt_dir, tag="state")
        torch.save(_rng_state(), Path(ckpt_dir) / f"rng_rank{self.rank}.pt")
        modes = Path(ckpt_dir) / f"optimizer_modes_rank{self.rank}.pt"
        if self.cfg.optimizer_state == "per_mode":  # DeepSpeed saved the active mode's state
            torch.save(self._mode_states(), modes)
        else:
            modes.unlink(missing_ok=True)  # a step saved again, with shared state this time
        sd = self.full_state_dict()
        lora = self.model_cfg.lora.enabled
        if lora and hf_dir is not None:
            with self._gathered(), torch.no_grad():  # collective under ZeRO-3
                if self.rank == 0:
                    self.engine.module.save_pretrained(str(Path(hf_dir).parent / "adapter"))
        if self.rank == 0:
            if hf_dir is not None:
                from transformers import AutoTokenizer

                base = self.engine.module
                base = base.get_base_model() if lora else base
                base.save_pretrained(hf_dir, state_dict=sd)
                AutoTokenizer.from_pretrained(self.model_path).save_pretrained(hf_dir)
            ref = {k: v.contiguous() for k, v in self.reference.state_dict().items()}
            save_file(_untie(ref), str(Path(ckpt_dir) / "reference.safetensors"))

    def load(self, ckpt_dir: str) -> None:
        import torch
        from safetensors.torch import load_file

        modes = Path(ckpt_dir) / f"optimizer_modes_rank{self.rank}.pt"
        per_mode = self.cfg.optimizer_state == "per_mode"
        if modes.is_file() != per_mode:
            held = "one Adam state per mode" if modes.is_file() else "one shared Adam state"
            raise RuntimeError(
                f"{ckpt_dir} holds {held}, but learner.optimizer_state="
                f"{self.cfg.optimizer_state}: resume with the setting it was saved with, or "
                "start a new run"
            )
        self.engine.load_checkpoint(ckpt_dir, tag="state")
        if per_mode:
            self._load_mode_states(torch.load(modes, weights_only=True))
        rng = Path(ckpt_dir) / f"rng_rank{self.rank}.pt"
        if rng.is_file():  # dropout (LoRA) draws continue where the saved run stopped
            state = torch.load(rng, weights_only=True)
            torch.set_rng_state(state["cpu"])
            if state.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])
        ref = load_file(str(Path(ckpt_dir) / "reference.safetensors"))
        self.reference.load_state_dict(ref, strict=False)


def _copy_state(state) -> dict:
    """A copy of a torch optimizer's ``state`` (param -> {name: value}) under the same keys."""
    from collections import defaultdict

    import torch

    return defaultdict(
        dict,
        {
            p: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in state.items()
        },
    )


def _rng_state() -> dict:
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _lora_merged_state(module) -> dict:
    """A PEFT model's weights with its active LoRA adapters merged, under the base model's HF
    names: W + delta(W) for every adapted layer, new tensors; the module is not modified.

    Not ``merge_adapter()``, ``state_dict()``, ``unmerge_adapter()``: the state dict aliases the
    weights that the unmerge restores in place, so what it returned was the base model again (the
    engines, checkpoints and the KL reference got the base weights), and every merge-unmerge
    round trip moves the frozen base weights by a rounding error."""
    from peft.tuners.lora import LoraLayer

    state = _merged_names(module.state_dict())  # the base weights (aliases)
    for name, layer in module.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        key = name.removeprefix("base_model.model.") + ".weight"
        weight = state[key]
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        state[key] = weight
    return state


def _merged_names(state: dict) -> dict:
    """PEFT state dict after merge_adapter -> the base model's HF names, adapters dropped."""
    out = {}
    for k, v in state.items():
        if "lora_" in k:
            continue
        k = k.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out[k] = v
    return out


def _untie(state: dict) -> dict:
    """safetensors refuses tensors that share memory (tied embeddings): copy the duplicates."""
    seen, out = set(), {}
    for k, v in state.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out
