"""The roles on a real local Ray cluster: DeepSpeed learner ranks (gloo) and a vLLM rollout engine.

- two ZeRO ranks compute the gradient one process computes on the whole batch (so the loss
  normalisation over ranks and micro-batches is right), for ZeRO stages 0, 2 and 3;
- SASR's gradient-only probe measures the same norm as the step it stands in for;
- a GRPO step raises the logprob of a positive-advantage response;
- parity after weight sync: tokens the vLLM engine samples after a sync are scored by the learner
  with the same logprobs (tolerance below), while the pre-sync engine's are far off.
"""

import dataclasses
import math

import pytest
import torch

from ray_s3ft.config import load_config
from ray_s3ft.workers.batches import grpo_batch, sft_batch, shard
from ray_s3ft.workers.group import ActorGroup, Resources
from ray_s3ft.workers.learner import LearnerActor
from ray_s3ft.workers.rollout import RolloutWorker
from ray_s3ft.workers.types import Sampling

pytestmark = pytest.mark.slow

# Measured max |learner logp - vLLM logp| over ~1000 sampled tokens after a sync: 7e-6 (fp32 on
# both sides; the differences are summation order in different kernels). A stale engine is off by
# by 4.2 on the same tokens; 1e-4 is 14x the measured error and 40000x below the stale one.
PARITY_TOL = 1e-4
# bf16 learner vs a bf16 single process, relative (loss, grad norm). Measured (2 ranks x 2
# micro-batches, ZeRO 0/1/2): loss 2e-6, grad norm 1.5e-4 to 2.1e-4 (bf16 summation order).
BF16_TOL = (1e-4, 2e-3)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoTokenizer

    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.tasks.builtin import task_split

    path = resolve_model_path("builtin")
    tok = AutoTokenizer.from_pretrained(path)
    examples = task_split("train", 16, seed=0)
    batch = sft_batch(tok, [e.prompt for e in examples], [e.gold for e in examples], 512)
    return path, tok, examples, batch


def _learners(path, stage, lr=1e-4, overrides=(), trainable=None, grpo_lr=None):
    """Two ranks, set up; ``trainable`` receives the trainable parameter count."""
    cfg = load_config(
        # schedule sft: sasr's probe rules out ZeRO-3 in the config, and no schedule runs here
        overrides=[
            f"learner.zero_stage={stage}",
            "learner.micro_batch_size=4",
            "schedule.kind=sft",
            *overrides,
        ]  # fmt: skip
    )
    group = ActorGroup(
        LearnerActor, 2, name=f"learner-z{stage}", resources=Resources(cpus=1),
        kwargs=dict(world_size=2, model_path=path, model=cfg.model, cfg=cfg.learner,
                    grpo=cfg.algorithm.grpo, lr=lr, grpo_lr=grpo_lr, weight_decay=0.0, seed=0),
        rank_kwargs=lambda i: {"rank": i},
    )  # fmt: skip
    addr, port = group.call_one(LearnerActor.master_address)
    counts = group.call(LearnerActor.setup, addr, port)
    if trainable is not None:
        trainable.extend(counts)
    return group


def _rollout(path, backend):
    cfg = load_config(overrides=[f"rollout.backend={backend}"]).rollout
    return ActorGroup(
        RolloutWorker,
        1,
        name=f"rollout-{backend}",
        resources=Resources(cpus=0.5),
        kwargs=dict(model_path=path, cfg=cfg, max_model_len=512, max_prompt_tokens=256),
    )


def _rollout_and_learners(path, backend, lr):
    """A rollout engine and two ZeRO-2 ranks; the engine starts while the ranks set up."""
    rollout = _rollout(path, backend)
    try:
        return rollout, _learners(path, 2, lr=lr)
    except BaseException:
        rollout.shutdown()
        raise


def _four_samples(rollout, tok, examples):
    """A GRPO batch of four prompts, one sample each at T = 0.7, advantages +1, -1, +1, -1."""
    gens = rollout.call_one(
        RolloutWorker.generate, [e.prompt for e in examples[:4]],
        Sampling(n=1, temperature=0.7, max_new_tokens=48),
    ).generations  # fmt: skip
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    return grpo_batch(gens, adv, tok.pad_token_id, 48, temperature=0.7)


def _single_process_sft(path, batch, bf16=False):
    """Loss and gradient norm of the whole batch in one process: the reference numbers.
    ``bf16``: the parameters in bf16 as DeepSpeed's bf16 mode holds them (buffers such as the
    rotary frequencies stay fp32), the gradients accumulated over micro-batches of 4."""
    from transformers import AutoModelForCausalLM

    from ray_s3ft.algo.losses import masked_nll, token_logprobs
    from ray_s3ft.workers.batches import take_rows

    m = AutoModelForCausalLM.from_pretrained(path)
    micro = batch.num_sequences
    if bf16:
        for p in m.parameters():
            p.data = p.data.bfloat16()
        micro = 4
    total = 0.0
    for start in range(0, batch.num_sequences, micro):
        mb = take_rows(batch, slice(start, start + micro))
        logits = m(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1]
        logp = token_logprobs(logits, mb.input_ids[:, 1:])
        loss = masked_nll(logp, mb.loss_mask[:, 1:], normalizer=batch.global_tokens)
        loss.backward()
        total += loss.item()
    norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in m.parameters()))
    return total, norm


# SASR's gate reads this grad norm: it must be the single-process norm under gradient
# accumulation (2 micro-batches per rank) with and without CPU optimizer offload, where a
# DeepSpeed bug once dropped later micro-batches' gradients (docs/methods.md §5).
# bf16: DeepSpeed's bf16 mode (bf16 weights and gradients, fp32 master weights), whose ZeRO-0
# optimizer once left the gate one micro-batch's norm; compared with a bf16 single process.
@pytest.mark.parametrize(
    "stage, offload, bf16",
    [(0, False, False), (2, False, False), (3, False, False),
     pytest.param(1, True, False, marks=pytest.mark.cpu_adam),
     pytest.param(2, True, False, marks=pytest.mark.cpu_adam),
     (0, False, True), (2, False, True)],
)  # fmt: skip
def test_two_ranks_match_one_process(ray_cluster, model, stage, offload, bf16):
    path, _, _, batch = model
    ref_loss, ref_norm = _single_process_sft(path, batch, bf16=bf16)
    flags = [
        f"learner.offload_optimizer={str(offload).lower()}",
        f"learner.bf16={str(bf16).lower()}",
    ]
    group = _learners(path, stage, overrides=flags)
    try:
        stats = group.scatter(LearnerActor.train_step, shard(batch, 2), mode="sft")
        # 2 ranks x 2 micro-batches of 4 sequences each, reduced: the same numbers as one pass
        assert math.isnan(stats[0].kl) and math.isnan(stats[1].kl)  # SFT: no reference pass
        assert dataclasses.replace(stats[0], kl=0.0) == dataclasses.replace(stats[1], kl=0.0)
        print(f"stage {stage} bf16 {bf16}: loss {stats[0].loss:.6f} vs {ref_loss:.6f}, "
              f"grad norm {stats[0].grad_norm:.6f} vs one process {ref_norm:.6f}")  # fmt: skip
        tol = BF16_TOL if bf16 else (1e-5, 1e-4)
        assert stats[0].loss == pytest.approx(ref_loss, rel=tol[0])
        assert stats[0].grad_norm == pytest.approx(ref_norm, rel=tol[1])
        assert stats[0].tokens == int(batch.loss_mask.sum())
    finally:
        group.shutdown()


def test_probe_norm_equals_step_norm_and_sft_loss_falls(ray_cluster, model):
    path, _, _, batch = model
    group = _learners(path, 2, lr=1e-3, overrides=["learner.sft_kl=true"])  # KL on SFT steps
    try:
        shards = shard(batch, 2)
        probe = group.scatter(LearnerActor.grad_probe, shards)
        losses = []
        for _ in range(3):
            stats = group.scatter(LearnerActor.train_step, shards, mode="sft")[0]
            losses.append(stats.loss)
            if len(losses) == 1:
                assert probe[0] == probe[1] == pytest.approx(stats.grad_norm, rel=1e-5)
        assert losses[0] > losses[1] > losses[2]
        assert stats.kl > 0  # the policy left its reference
        # reset (between the cells of a compare grid): base weights, fresh optimizer, reference
        group.call(LearnerActor.reset, 0)
        again = group.scatter(LearnerActor.train_step, shards, mode="sft")[0]
        assert again.loss == pytest.approx(losses[0], rel=1e-6)
        assert again.kl == pytest.approx(0.0, abs=1e-9)
        assert group.scatter(LearnerActor.train_step, shards, mode="sft")[0].loss == (
            pytest.approx(losses[1], rel=1e-5)
        )  # the optimizer state restarted too (Adam's first step again)
    finally:
        group.shutdown()


def test_grpo_step_moves_logprobs_along_the_advantages(ray_cluster, model):
    path, tok, examples, _ = model
    rollout, group = _rollout_and_learners(path, "hf", lr=1e-4)
    try:
        batch = _four_samples(rollout, tok, examples)
        shards = shard(batch, 2)  # rows ordered by length, each shard cut to its own width
        before = group.scatter(LearnerActor.logprobs, shards)  # per rank [2, T_r - 1]
        for s, b in zip(shards, before, strict=True):
            # the hf engine's logprobs are the learner's own (same weights, fp32), both of the
            # tempered distribution the tokens were sampled from (logits / 0.7)
            mask = s.loss_mask[:, 1:]
            assert torch.allclose(b * mask, s.rollout_logprobs[:, 1:], atol=PARITY_TOL)
        stats = group.scatter(LearnerActor.train_step, shards, mode="grpo")[0]
        after = group.scatter(LearnerActor.logprobs, shards)
        for s, b, a in zip(shards, before, after, strict=True):
            seq_change = ((a - b) * s.loss_mask[:, 1:]).sum(1)  # [2] change of log p(response)
            assert (seq_change * s.advantages > 0).all(), seq_change
        assert stats.kl == pytest.approx(0.0, abs=1e-6)  # measured before the update
        assert stats.tokens == int(batch.loss_mask[:, 1:].sum())
    finally:
        group.shutdown()
        rollout.shutdown()


def test_vllm_logprobs_match_the_learner_after_a_weight_sync(ray_cluster, model):
    path, tok, examples, batch = model
    rollout, group = _rollout_and_learners(path, "vllm", lr=1e-3)
    try:
        for _ in range(2):  # move the weights well away from the base model
            group.scatter(LearnerActor.train_step, shard(batch, 2), mode="sft")
        prompts = [e.prompt for e in examples[:8]]
        sampling = Sampling(n=4, temperature=1.0, max_new_tokens=32)

        def diff(result):
            b = grpo_batch(result.generations, torch.zeros(32), tok.pad_token_id, 32)
            shards = shard(b, 2)
            learner = group.scatter(LearnerActor.logprobs, shards)
            return max(
                ((lp - s.rollout_logprobs[:, 1:]).abs() * s.loss_mask[:, 1:]).max().item()
                for s, lp in zip(shards, learner, strict=True)
            )

        stale = diff(rollout.call_one(RolloutWorker.generate, prompts, sampling))
        refs = group.submit(LearnerActor.engine_weights)
        assert rollout.call(RolloutWorker.update_weights, 7, refs[0]) == [7]
        assert group.wait(refs[1:]) == [None]
        result = rollout.call_one(RolloutWorker.generate, prompts, sampling)
        assert result.weights_version == 7 and result.new_tokens > 100
        synced = diff(result)
        print(f"max |learner - vLLM| logprob: stale engine {stale:.3g}, after sync {synced:.3g}")
        assert stale > 100 * PARITY_TOL
        assert synced < PARITY_TOL
    finally:
        group.shutdown()
        rollout.shutdown()


def test_lora_trains_adapters_only_and_syncs_merged_hf_weights(ray_cluster, model, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path, _, _, batch = model
    trainable = []
    group = _learners(path, 2, lr=1e-2, overrides=["model.lora.enabled=true"], trainable=trainable)
    try:
        # r=8 adapters on q, k, v, o of 4 layers of width 128: 4 * 4 * 8 * (128 + 128)
        assert trainable == [4 * 4 * 8 * (128 + 128)] * 2
        for _ in range(2):
            group.scatter(LearnerActor.train_step, shard(batch, 2), mode="sft")
        merged = group.call(LearnerActor.full_state_dict)[0]
        base = load_file(f"{path}/model.safetensors")
        assert set(base) <= set(merged)  # the base model's own names: vLLM and HF load them
        changed = {k for k in base if not torch.equal(base[k], merged[k])}
        assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj")
                               for k in changed)  # fmt: skip
        group.call(LearnerActor.save, str(tmp_path / "ds"), str(tmp_path / "hf"))
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        reloaded = hf.state_dict()
        assert all(torch.equal(reloaded[k], merged[k]) for k in changed)
        # the saved model is the trained one: it scores the batch as the learner does (a merge
        # that was undone before the weights were read once saved the base model again)
        from ray_s3ft.algo.losses import token_logprobs

        s = shard(batch, 2)[0]
        learner_logp = group.scatter(LearnerActor.logprobs, shard(batch, 2))[0]
        with torch.no_grad():
            logits = hf(input_ids=s.input_ids, attention_mask=s.attention_mask).logits[:, :-1]
        mask = s.loss_mask[:, 1:]
        hf_logp = token_logprobs(logits, s.input_ids[:, 1:])
        assert ((hf_logp - learner_logp).abs() * mask).max() < PARITY_TOL
        again = group.scatter(LearnerActor.logprobs, shard(batch, 2))[0]
        assert torch.equal(again, learner_logp)  # exporting the merge left the model as it was
    finally:
        group.shutdown()


@pytest.mark.parametrize("rl_dropout", [False, True])
def test_rl_dropout_off_keeps_the_ratio_at_one_and_warmup_sets_the_lr(
    ray_cluster, model, rl_dropout
):
    """LoRA with dropout 0.1: pi_old is scored without dropout; with learner.rl_dropout off the
    updates are too, so at grpo_lr 0 (the policy stays pi_old) every ratio is exactly 1."""
    path, _, _, batch = model
    overrides = [
        "model.lora.enabled=true", "model.lora.dropout=0.1", f"learner.rl_dropout={rl_dropout}",
        "algorithm.grpo.updates_per_batch=2", "learner.sft_warmup_steps=3",
    ]  # fmt: skip
    group = _learners(path, 2, lr=1e-2, grpo_lr=0.0, overrides=overrides)
    try:
        # LoRA's B starts at 0 (no dropout noise reaches the output): two SFT steps move it,
        # at 1e-2 * 1/4 and 1e-2 * 2/4 (warm-up of 3 steps)
        lrs = [
            group.scatter(LearnerActor.train_step, shard(batch, 2), mode="sft", mode_step=n)[0].lr
            for n in range(2)
        ]
        assert lrs == pytest.approx([2.5e-3, 5e-3], rel=1e-12)
        rows = batch.num_sequences
        grpo = dataclasses.replace(
            batch,
            advantages=torch.tensor([1.0, -1.0] * (rows // 2)),
            rollout_logprobs=torch.zeros(batch.input_ids.shape),
            max_new_tokens=64,
        )
        stats = group.scatter(LearnerActor.train_step, shard(grpo, 2), mode="grpo")[0]
        assert stats.updates == 2 and stats.lr == 0.0
        if rl_dropout:
            assert stats.ratio_dev > 1e-3, stats.ratio_dev  # dropout noise in every ratio
        else:
            assert stats.ratio_dev == 0.0
            assert stats.clip_frac == 0.0
    finally:
        group.shutdown()


def test_a_mix_step_measures_its_sft_norm_alone_and_leaves_the_step_as_it_was(ray_cluster, model):
    # schedule.kind sasr_soft: the SFT part's gradient norm is the one a probe measures on the
    # same batch, and measuring it changes nothing of the ZeRO-2 step (DeepSpeed's gradient
    # hooks do not see it: taken inside the step on the engine's forward, they fired)
    path, tok, examples, batch = model
    rollout, group = _rollout_and_learners(path, "hf", lr=1e-4)
    try:
        rl = _four_samples(rollout, tok, examples)
        pairs = list(zip(shard(rl, 2), shard(batch, 2), strict=True))
        probe = group.scatter(LearnerActor.grad_probe, shard(batch, 2))[0]
        measured = group.scatter(LearnerActor.mix_step, pairs, mu=0.3, sft_norm=True)
        assert measured[0] == measured[1]  # reduced over ranks
        m = measured[0]
        assert m.mix.sft_grad_norm == pytest.approx(probe, rel=1e-5)
        group.call(LearnerActor.reset, 0)  # the base weights and a fresh optimizer again
        plain = group.scatter(LearnerActor.mix_step, pairs, mu=0.3)[0]
        assert math.isnan(plain.mix.sft_grad_norm)
        assert plain.grad_norm == pytest.approx(m.grad_norm, rel=1e-6)
        assert plain.loss == pytest.approx(m.loss, rel=1e-6)
        # the KL term is 0 at the reference: the loss is the two parts, weighted
        assert m.loss == pytest.approx(0.7 * m.pg_loss + 0.3 * m.mix.sft_loss, abs=1e-6)
    finally:
        group.shutdown()
        rollout.shutdown()
