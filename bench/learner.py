"""Learner: SFT step time of the DeepSpeed ``LearnerActor`` group against a bare torch loop on
the same model, batches and optimizer.

The bare loop does what an SFT step has to: per micro-batch forward, masked NLL normalised by
the step's token count (``ray_s3ft.algo.losses``), backward; then gradient clipping and one
torch AdamW step, with the learner's lr, weight decay, clip, micro-batch size, seed and thread
count (``cluster.py`` gives each rank ``OMP_NUM_THREADS = cpus_per_learner`` = 1 by default).
A second baseline adds what ``train_step`` also computes for its statistics (the reference
model's forward for the KL, the entropy), which separates DeepSpeed + Ray from that work.
The learner is called as the controller calls it (``scatter(train_step)``, ray.get included).
Two ranks on two cores are compared with the bare loop on two threads: a different baseline
(data parallelism against intra-op threads), reported for the default layout. The groups of
each world size start and set up side by side, untimed; each is then timed alone (the others
idle) and shut down.
"""

from __future__ import annotations

import statistics
import time

from bench.common import Row, parser, private_ray, report, task_prompts


def _setup(args):
    from transformers import AutoTokenizer

    from ray_s3ft.config import load_config
    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.workers.batches import sft_batch

    cfg = load_config(
        overrides=[
            "schedule.kind=sft",
            f"learner.zero_stage={args.zero_stage}",
            f"learner.micro_batch_size={args.micro_batch}",
        ]
    )
    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    n = args.batch
    examples = task_prompts(n * (args.warmup + args.steps))
    batches = [
        sft_batch(
            tok,
            [e.prompt for e in examples[i * n : (i + 1) * n]],
            [e.gold for e in examples[i * n : (i + 1) * n]],
            cfg.model.max_model_len,
        )
        for i in range(args.warmup + args.steps)
    ]
    return cfg, path, batches


def _summary(args, seconds: list[float], losses: list[float]) -> dict:
    timed = seconds[args.warmup :]
    return {"median_s": statistics.median(timed), "seconds": timed, "losses": losses}


def bare_loop(args, cfg, path, batches, threads: int, extra_work: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from ray_s3ft.algo.grpo import kl_k3
    from ray_s3ft.algo.losses import entropy_from_logits, masked_nll, token_logprobs

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.trainer.seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    ref = None
    if extra_work:
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        ref.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learner.lr, weight_decay=cfg.learner.weight_decay)
    micro = cfg.learner.micro_batch_size
    seconds, losses = [], []
    for b in batches:
        started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for start in range(0, b.num_sequences, micro):
            ids = b.input_ids[start : start + micro]
            attn = b.attention_mask[start : start + micro]
            mask = b.loss_mask[start : start + micro, 1:]
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
            logp = token_logprobs(logits, ids[:, 1:])
            loss = masked_nll(logp, mask, normalizer=b.global_tokens)
            if ref is not None:
                with torch.no_grad():
                    ref_logits = ref(input_ids=ids, attention_mask=attn).logits[:, :-1]
                    (kl_k3(logp, token_logprobs(ref_logits, ids[:, 1:])) * mask).sum().item()
                    entropy_from_logits(logits.detach(), mask).item()
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, cfg.learner.grad_clip)
        opt.step()
        seconds.append(time.perf_counter() - started)
        losses.append(total)
    return _summary(args, seconds, losses)


def learner_group(args, cfg, path, ranks: int, logs: str):
    """A group of ``ranks`` learner ranks, started (not yet set up)."""
    from ray_s3ft.workers.group import ActorGroup, Resources
    from ray_s3ft.workers.learner import LearnerActor

    threads = args.threads
    return ActorGroup(
        LearnerActor, ranks, name=f"learner-{ranks}", log_dir=logs,
        resources=Resources(threads, 0.0, {"OMP_NUM_THREADS": str(threads)}),
        kwargs=dict(world_size=ranks, model_path=path, model=cfg.model, cfg=cfg.learner,
                    grpo=cfg.algorithm.grpo, lr=cfg.learner.lr, grpo_lr=cfg.learner.grpo_lr,
                    weight_decay=cfg.learner.weight_decay, seed=cfg.trainer.seed,
                    threads=threads),
        rank_kwargs=lambda i: {"rank": i},
    )  # fmt: skip


def learner_groups(args, cfg, path, batches, ranks: list[int], logs: str) -> dict:
    """World size -> its timed steps. The groups start and set up side by side (nothing is
    timed then: their imports overlap); then each is timed alone while the others idle, and
    shut down after its steps."""
    from ray_s3ft.workers.batches import shard
    from ray_s3ft.workers.learner import LearnerActor

    groups = {n: learner_group(args, cfg, path, n, logs) for n in ranks}
    try:
        setups = {}
        for n, group in groups.items():
            addr, port = group.call_one(LearnerActor.master_address)
            setups[n] = group.submit(LearnerActor.setup, addr, port)
        for n, group in groups.items():
            group.wait(setups[n])
        out = {}
        for n, group in groups.items():
            seconds, losses = [], []
            for b in batches:
                shards = shard(b, n)
                started = time.perf_counter()
                stats = group.scatter(LearnerActor.train_step, shards, mode="sft")[0]
                seconds.append(time.perf_counter() - started)
                losses.append(stats.loss)
            out[n] = _summary(args, seconds, losses)
            group.shutdown()
        return out
    finally:
        for group in groups.values():
            group.shutdown()


def main(argv=None) -> dict:
    ap = parser("learner", __doc__)
    ap.add_argument("--model", default="builtin", help="model directory (default: built-in)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (sft_batch_size)")
    ap.add_argument("--micro-batch", type=int, default=8, help="learner.micro_batch_size")
    ap.add_argument("--zero-stage", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--ranks", default="1,2", help="learner world sizes to run")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.micro_batch, args.warmup, args.steps, args.ranks = 4, 2, 1, 1, "1,2"
    ranks = [int(x) for x in args.ranks.split(",")]
    cfg, path, batches = _setup(args)

    bare = {1: bare_loop(args, cfg, path, batches, args.threads, extra_work=False)}
    matched = bare_loop(args, cfg, path, batches, args.threads, extra_work=True)
    if 2 in ranks:
        bare[2] = bare_loop(args, cfg, path, batches, 2 * args.threads, extra_work=False)
    with private_ray(num_cpus=max(4, args.threads * sum(ranks))) as logs:  # all at once
        ours = learner_groups(args, cfg, path, batches, ranks, logs)

    t = args.threads
    rows = []
    if 1 in ranks:
        rows += [
            Row(f"1 rank vs bare loop ({t} thread)", ours[1]["median_s"], bare[1]["median_s"],
                "s/step", ("<=", 1.15)),
            Row(f"1 rank vs bare loop + reference fwd + entropy ({t} thread)",
                ours[1]["median_s"], matched["median_s"], "s/step"),
            Row(f"bare loop + reference fwd + entropy vs bare loop ({t} thread)",
                matched["median_s"], bare[1]["median_s"], "s/step"),
        ]  # fmt: skip
    if 2 in ranks:
        rows.append(
            Row(f"2 ranks x {t} thread vs bare loop ({2 * t} threads)", ours[2]["median_s"],
                bare[2]["median_s"], "s/step")
        )  # fmt: skip
    details = {
        "ours": ours,
        "bare": bare,
        "bare_with_reference": matched,
        "tokens_per_step": [int(b.global_tokens) for b in batches[args.warmup :]],
    }
    return report("learner", args, rows, details)


if __name__ == "__main__":
    main()
