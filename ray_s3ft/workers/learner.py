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
docs/methods.md §5; the default for every schedule) the controller resets it to the
policy at the end of the warm-up.

Adam's state is shared by SFT and GRPO steps, or with ``learner.optimizer_state: per_mode`` kept
per mode over the same parameters (``_use_optimizer_state``): under shared state each update
carries about 1 / (1 - beta1) = 10 steps of momentum from both modes, so ``learner.grpo_lr``
does not set the size of a GRPO update.

The actor is split by job: this module runs the steps (the loss of each mode and the step's
named sums are in ``learner_step``), ``learner_model.ModelMixin`` builds the engine and the
reference and hands out the weights, ``learner_state.StateMixin`` keeps the per-mode optimizer
state and saves and loads checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from ray_s3ft.config import GRPOConfig, LearnerConfig, ModelConfig
from ray_s3ft.workers.learner_model import ModelMixin
from ray_s3ft.workers.learner_state import StateMixin
from ray_s3ft.workers.learner_step import LOSSES, MicroBatch, StepSums, step_stats
from ray_s3ft.workers.types import MixStats, StepStats, TrainBatch

log = logging.getLogger(__name__)


@dataclass
class Part:
    """One loss of an optimizer step: an SFT or GRPO update has one, a mix step two."""

    batch: TrainBatch  # this rank's rows
    mode: str  # "sft" | "grpo": its loss (learner_step.LOSSES)
    sums: StepSums  # its statistics, added to micro-batch by micro-batch
    tokens: float  # its normalisers over every rank: response tokens
    seqs: int  # and sequences
    weight: float = 1.0  # of its loss in the step (a mix: 1 - mu for GRPO, mu for SFT)
    old: Any = None  # [B, T-1] pi_old when the update has several mini-batches
    token_weight: str = "none"  # SFT: schedule.mix.token_weight


# what a reset may change (read at each step); the rest built the model and the process group
_PER_CELL = ("optimizer_state", "rl_dropout", "sft_warmup_steps", "grpo_warmup_steps")


class LearnerActor(ModelMixin, StateMixin):
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
        ray = sys.modules.get("ray")  # in-process (bench/gpu) there may be no Ray installed
        if ray is not None and ray.is_initialized() and ray.get_runtime_context().get_actor_id():
            # DeepSpeed's autotuner imports MLflow whenever it is installed: 1 s of a rank's
            # start on 2 cores. A rank actor never tracks (the driver does): MLflow stays out.
            sys.modules.setdefault("mlflow", None)
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
        # DeepSpeed's torch backend compiles its shared-memory all-reduce (a C++ op: about a
        # minute on 2 cores, again in every new environment) when it starts, yet only
        # DeepSpeed inference calls it (inference_all_reduce); training's collectives go
        # through torch.distributed. Marking the op incompatible skips the build.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
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
        import gc

        if cfg is not None:
            changed = [
                f.name
                for f in dataclasses.fields(cfg)
                if f.name not in _PER_CELL and getattr(cfg, f.name) != getattr(self.cfg, f.name)
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

    # ---------------------------------------------------------------------------------- steps

    def _logprobs(self, module, batch: TrainBatch, rows: slice, temperature: float = 1.0):
        """Per-token logprobs of each next token under ``logits / temperature``, and those
        tempered logits: [b, T-1], [b, T-1, V]. GRPO passes the rollout's temperature (the
        distribution the engine sampled from and reported logprobs of); SFT 1.0."""
        from ray_s3ft.algo.losses import token_logprobs

        if not temperature > 0:  # greedy rollouts are never trained on (config.checks, batches)
            raise ValueError(f"logprobs need a sampling temperature > 0, got {temperature}")
        ids = batch.input_ids[rows].to(self.device)  # [b, T]
        attn = batch.attention_mask[rows].to(self.device)  # [b, T]
        logits = module(input_ids=ids, attention_mask=attn).logits[:, :-1]  # [b, T-1, V]
        if temperature != 1.0:
            logits = logits.float() / temperature  # fp32 first: bf16 logits / T round again
        return token_logprobs(logits, ids[:, 1:]), logits  # [b, T-1], [b, T-1, V]

    def train_step(self, batch: TrainBatch, mode: str, mode_step: int = 0) -> StepStats:
        """One SFT or GRPO update on this rank's share of the batch (``mode`` "sft" or "grpo");
        ``mode_step``: the steps of this mode the run took before (the learning-rate warm-up
        counts them; the controller's checkpointed count, so a resumed run goes on with it).

        SFT: one optimizer step. GRPO: ``algorithm.grpo.updates_per_batch`` (k) optimizer steps,
        one per mini-batch (this rank's rows cut into k slices); with k > 1 one pass scores
        the whole batch with the policy that sampled it first (pi_old, eval mode), so the
        ratio pi / pi_old moves off 1 from the second mini-batch on and the clip acts. The
        returned losses, grad norm and learning rate are means over the k updates, the token
        statistics (KL, entropy, clip share) means over the batch's tokens."""

        from ray_s3ft.algo.lr import warmup_lr
        from ray_s3ft.workers.batches import take_rows

        if mode not in ("sft", "grpo"):
            raise ValueError(f"mode must be 'sft' or 'grpo', got {mode!r}")
        engine = self.engine
        temp = batch.temperature if mode == "grpo" else 1.0  # SFT: plain NLL (for pi_old)
        self._use_optimizer_state(mode)
        k = self.grpo.updates_per_batch if mode == "grpo" else 1
        if batch.num_sequences % k:
            raise ValueError(f"{batch.num_sequences} rows do not cut into {k} mini-batches")
        old = self._old_logprobs(batch, temp, k) if k > 1 else None  # [B, T-1] pi_old
        self._train_mode(mode)
        sums = StepSums()
        size, norms, lrs = batch.num_sequences // k, [], []
        warmup = getattr(self.cfg, f"{mode}_warmup_steps")
        for u in range(k):
            lrs.append(warmup_lr(self.lr_by_mode[mode], mode_step * k + u, warmup))
            for group in engine.optimizer.param_groups:
                group["lr"] = lrs[-1]
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
            norms.append(self._update([Part(part, mode, sums, tokens, seqs, old=part_old)]))
        finite = [n for n in norms if n is not None]
        return step_stats(
            sums.reduced(self._all_reduce), updates=k,
            with_kl=mode == "grpo" or self.cfg.sft_kl, is_cap=batch.is_cap,
            grad_norm=sum(finite) / len(finite) if finite else float("nan"), lr=sum(lrs) / k,
        )  # fmt: skip

    def _train_mode(self, mode: str) -> None:
        """Train mode; for GRPO without ``learner.rl_dropout`` its dropout layers (LoRA's) stay
        in eval mode, as when pi_old and the engines' logprobs were taken, so that the ratio
        pi / pi_old is exactly 1 before the first update. Not ``engine.eval()``: transformers
        skips gradient checkpointing in eval mode."""
        from torch.nn.modules.dropout import _DropoutNd

        self.engine.train()
        if mode == "grpo" and not self.cfg.rl_dropout:
            for m in self.engine.module.modules():
                if isinstance(m, _DropoutNd):
                    m.eval()

    def _old_logprobs(self, batch: TrainBatch, temperature: float, k: int):
        """pi_old: the current policy's logprobs of the whole batch before its updates, in eval
        mode (no dropout) and without a graph: [B, T-1], zero past each row's length. Scored
        in the mini-batches and micro-batches the k updates will score (rows u::k), so that
        the same padded shapes give the same numbers: without dropout (``learner.rl_dropout``
        off) the first update's ratio is exactly 1, not 1 +- a kernel's rounding."""
        import torch

        from ray_s3ft.workers.batches import take_rows

        out = torch.zeros(batch.input_ids.shape[0], batch.input_ids.shape[1] - 1)
        micro = self.cfg.micro_batch_size
        self.engine.eval()
        with torch.no_grad():
            for u in range(k):
                part, rows = take_rows(batch, slice(u, None, k)), torch.arange(u, len(out), k)
                for start in range(0, part.num_sequences, micro):
                    mb = take_rows(part, slice(start, start + micro))
                    logp, _ = self._logprobs(self.engine.module, mb, slice(None), temperature)
                    out[rows[start : start + micro], : logp.shape[1]] = logp.float().cpu()
        return out

    def mix_step(
        self,
        batches: tuple[TrainBatch, TrainBatch],
        mu: float,
        mode_step: int = 0,
        sft_norm: bool = False,
        token_weight: str = "none",
    ) -> StepStats:
        """One optimizer step on ``(1 - mu) * GRPO + mu * SFT`` (``schedule.kind`` mix and
        sasr_soft): ``batches`` is this rank's share of the GRPO batch and of the SFT batch.
        Each loss is normalised as its own step would be (GRPO by ``algorithm.grpo.loss_agg``
        over the GRPO batch, SFT by the SFT batch's tokens), so mu alone sets their balance
        whatever the two batches' lengths, and mu = 1 / 0 would be a plain SFT / GRPO step.

        One Adam state (the config rejects ``per_mode``: the update carries both losses); the
        learning rate is the geometric mean of the two modes' (after their warm-ups, counted
        in mix steps), weighted by mu: lr ** mu * grpo_lr ** (1 - mu), since the two are
        often a decade apart and a linear mix would be the SFT rate for any mu above 0.1.
        Dropout follows the GRPO rule (``learner.rl_dropout``) for both parts. ``sft_norm``:
        also measure the SFT part's gradient norm alone (sasr_soft's gate reads it) with a
        gradient-only probe (``grad_probe``) before the update: one more forward and backward
        over the SFT batch. (Taking it inside the step with ``torch.autograd.grad`` on the
        engine's forward fires DeepSpeed's ZeRO-2 gradient-reduction hooks.) Returns the GRPO part's statistics, with the
        total ``loss``, the combined ``grad_norm`` and ``mix`` = the SFT part's."""
        from ray_s3ft.algo.lr import warmup_lr

        if not 0.0 < mu < 1.0:
            raise ValueError(f"a mix step needs 0 < mu < 1, got {mu} (1 / 0: a plain step)")
        if self.cfg.optimizer_state != "shared" or self.grpo.updates_per_batch != 1:
            raise ValueError(
                "a mix step needs learner.optimizer_state=shared and "
                "algorithm.grpo.updates_per_batch=1"
            )
        rl, sft = batches
        lr = warmup_lr(self.lr_by_mode["sft"], mode_step, self.cfg.sft_warmup_steps) ** mu
        lr *= warmup_lr(self.lr_by_mode["grpo"], mode_step, self.cfg.grpo_warmup_steps) ** (1 - mu)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        self._train_mode("grpo")
        world = self.world_size
        rl_part = Part(rl, "grpo", StepSums(), rl.global_tokens, rl.num_sequences * world, 1 - mu)
        sft_part = Part(
            sft, "sft", StepSums(), sft.global_tokens, sft.num_sequences * world, mu,
            token_weight=token_weight,
        )  # fmt: skip
        # the SFT part's gradient alone, at the weights the step starts from: a probe (its own
        # forward on the module, which DeepSpeed's backward hooks do not watch)
        norm = self.grad_probe(sft, token_weight) if sft_norm else float("nan")
        grad_norm = self._update([rl_part, sft_part])
        f = sft_part.sums.reduced(self._all_reduce)
        stats = step_stats(
            rl_part.sums.reduced(self._all_reduce), updates=1, with_kl=True, is_cap=rl.is_cap,
            grad_norm=float("nan") if grad_norm is None else grad_norm, lr=lr,
        )  # fmt: skip
        return dataclasses.replace(
            stats,
            loss=(1 - mu) * stats.loss + mu * f["objective"],
            tokens=stats.tokens + int(f["tokens"]),
            sequences=stats.sequences + int(f["sequences"]),
            mix=MixStats(mu=mu, sft_loss=f["objective"], sft_grad_norm=norm),
        )

    def _update(self, parts: list[Part]) -> float | None:
        """One optimizer step over the micro-batches of every part (one ``Part`` for an SFT or
        GRPO update, two for a mix), each part's loss by its mode (``learner_step.LOSSES``),
        scaled by its normalisers over all ranks and its weight; the gradient accumulates
        over every micro-batch of every part, and the optimizer steps after the last. Adds to
        each part's sums; returns the step's grad norm (None: unknown)."""
        import torch

        from ray_s3ft.algo.grpo import kl_k3
        from ray_s3ft.algo.losses import entropy_from_logits
        from ray_s3ft.workers.batches import take_rows

        engine, micro = self.engine, self.cfg.micro_batch_size
        plan = [
            (p, i) for p in parts for i in range(math.ceil(p.batch.num_sequences / micro))
        ]  # fmt: skip
        engine.set_train_batch_size(micro * len(plan) * self.world_size)
        grad_norm = None
        for j, (p, i) in enumerate(plan):
            temp = p.batch.temperature if p.mode == "grpo" else 1.0  # SFT: plain NLL
            with_kl = p.mode == "grpo" or self.cfg.sft_kl  # SFT steps: KL only as a metric
            mb = take_rows(p.batch, slice(i * micro, (i + 1) * micro))  # its own length
            mask = mb.loss_mask[:, 1:].to(self.device)  # [b, T-1]
            logp, logits = self._logprobs(engine, mb, slice(None), temp)
            with torch.no_grad():
                ref_logp = None  # the reference forward costs a third of an SFT step
                if with_kl:  # the reference at the same temperature: KL between sampling policies
                    ref_logp, _ = self._logprobs(self.reference, mb, slice(None), temp)
                kl_tok = kl_k3(logp, ref_logp) * mask if with_kl else torch.zeros(1)
                ent = entropy_from_logits(logits.detach(), mask) * mask.sum()
            old_logp = None
            if p.old is not None:
                old_logp = p.old[i * micro : (i + 1) * micro, : logp.shape[1]].to(self.device)
            m = MicroBatch(
                p.batch, mb, logp, mask, ref_logp, old_logp, p.tokens, p.seqs, self.device,
                p.token_weight,
            )  # fmt: skip
            loss, pg, clip = LOSSES[p.mode](m, self.grpo, p.sums)
            last = j == len(plan) - 1
            engine.set_gradient_accumulation_boundary(last)
            engine.backward(loss * (p.weight * self.world_size), scale_wrt_gas=False)
            if last:
                grad_norm = self._stage0_grad_norm()
            engine.step()
            p.sums.add(
                objective=loss.item(),
                kl_tokens=kl_tok.sum().item(),
                entropy_tokens=ent.item(),
                tokens=mask.sum().item(),
                sequences=mask.shape[0],
                pg=pg,
                clip_tokens=clip,
            )
        if grad_norm is None:
            grad_norm = engine.get_global_grad_norm()
        return None if grad_norm is None else float(grad_norm)

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

    def grad_probe(self, batch: TrainBatch, token_weight: str = "none") -> float:
        """Global L2 norm of the SFT gradient on ``batch``, without an optimizer step (SASR's
        probe; a sasr_soft step's SFT part with its ``token_weight``). ``torch.autograd.grad``
        on the module's own forward leaves ``.grad`` and DeepSpeed's hooks untouched."""
        import torch

        from ray_s3ft.workers.batches import take_rows

        if self.cfg.zero_stage == 3:
            raise RuntimeError("grad_probe needs full parameters on each rank (zero_stage <= 2)")
        params = self._trainable()
        total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        micro = self.cfg.micro_batch_size
        for start in range(0, batch.num_sequences, micro):
            mb = take_rows(batch, slice(start, start + micro))
            logp, _ = self._logprobs(self.engine.module, mb, slice(None))  # T = 1: SFT's NLL
            mask = mb.loss_mask[:, 1:].to(self.device)
            m = MicroBatch(
                batch, mb, logp, mask, None, None, batch.global_tokens,
                batch.num_sequences * self.world_size, self.device, token_weight,
            )  # fmt: skip
            loss = LOSSES["sft"](m, self.grpo, StepSums())[0]
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
