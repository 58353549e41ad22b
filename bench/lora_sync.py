"""LoRA weight sync: seconds per learner -> engine sync with ``rollout.lora_sync=adapter`` (the
adapters alone: ``LearnerActor.engine_adapter`` -> Ray's object store ->
``RolloutWorker.update_adapter``, a PEFT adapter directory into vLLM's LoRA) against
``merged`` (``LearnerActor.engine_weights``, the adapters merged into full weights ->
``RolloutWorker.update_weights``, into a plain engine through the name map), against a plain
in-memory copy of the bytes each sends, and as a share of the step; and what serving the
adapters costs a generation: greedy decoding tokens/s of the same prompts on each engine
after its sync (the adapter engine with the adapter, the merged engine without LoRA).

``--model``: one or more models, comma-separated (directories or known names such as
``smollm2-135m``, fetched once; ``--smoke``: the built-in model), each measured in turn in the
same run, LoRA r = 8 on q, k, v, o (``model.lora`` defaults), one learner rank, one engine at
a time. The copy baseline copies each array the sync sent (the object-store buffers the engine
reads) into preallocated, already touched buffers, with the learner's thread count, in the
driver. The share is the adapter sync / (adapter sync + one LoRA SFT ``train_step`` on the
default batch), the engines shut down by then. Peak resident memory (``VmHWM``) of the learner
rank, each engine and the driver is in the details (``peak_rss``).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import warnings
from pathlib import Path

from bench.common import (
    Row,
    actor_peak_rss,
    one_learner,
    parser,
    peak_mib,
    peak_rss,
    private_ray,
    report,
    task_prompts,
)


def measure(args, path: str, logs: str) -> dict:
    import ray
    from transformers import AutoTokenizer

    from ray_s3ft.config import load_config
    from ray_s3ft.workers.batches import sft_batch, shard
    from ray_s3ft.workers.group import ActorGroup, Resources
    from ray_s3ft.workers.learner import LearnerActor
    from ray_s3ft.workers.rollout import RolloutWorker

    cfg = load_config(overrides=["schedule.kind=sft", "model.lora.enabled=true"])
    t = args.threads
    learner = one_learner(cfg, path, "learner-lora", t, logs)
    prompts = [e.prompt for e in task_prompts(args.prompts)]
    out, memory, answers = {}, {}, {}

    def start_engine(how: str) -> ActorGroup:
        rollout_cfg = dataclasses.replace(cfg.rollout, lora_sync=how)
        return ActorGroup(
            RolloutWorker, 1, name=f"rollout-{how}", log_dir=logs,
            resources=Resources(1.0, 0.0, {"OMP_NUM_THREADS": str(t)}),
            kwargs=dict(model_path=path, cfg=rollout_cfg,
                        max_model_len=cfg.model.max_model_len,
                        max_prompt_tokens=cfg.data.max_prompt_tokens, threads=t,
                        lora_rank=cfg.model.lora.r if how == "adapter" else None),
        )  # fmt: skip

    # the first engine starts while the learner sets up (one process each): nothing is timed
    # before both are up
    first = start_engine("merged")
    try:
        addr, port = learner.call_one(LearnerActor.master_address)
        learner.call(LearnerActor.setup, addr, port)
        for how, send, load in (
            ("merged", LearnerActor.engine_weights, RolloutWorker.update_weights),
            ("adapter", LearnerActor.engine_adapter, RolloutWorker.update_adapter),
        ):
            engine = first if how == "merged" else start_engine(how)
            try:
                engine.call(RolloutWorker.weights_version)  # the engine is up
                learner_s, engine_s, copy = [], [], None
                for version in range(1, args.warmup + args.repeats + 1):
                    started = time.perf_counter()
                    refs = learner.submit(send)
                    ray.wait(refs[:1], fetch_local=False)
                    stored = time.perf_counter()
                    engine.call(load, version, refs[0])
                    if version > args.warmup:
                        learner_s.append(stored - started)
                        engine_s.append(time.perf_counter() - stored)
                    if version == 1:  # the same bytes, copied in the driver
                        copy = copy_baseline(_arrays(ray.get(refs[0])), t, 2 * args.repeats)
                    del refs
                gen_s, tokens = [], []
                for i in range(args.warmup + args.repeats):
                    started = time.perf_counter()
                    got = engine.call_one(RolloutWorker.greedy_tokens, prompts, args.new_tokens)
                    if i >= args.warmup:
                        gen_s.append(time.perf_counter() - started)
                        tokens.append(sum(len(ids) for _, ids in got))
                answers[how] = [ids for _, ids in got]
                sync = [a + b for a, b in zip(learner_s, engine_s, strict=True)]
                out[how] = {
                    "bytes_sent": copy["bytes"],
                    "tensors_sent": copy["tensors"],
                    "sync_s": sync,
                    "median_sync_s": statistics.median(sync),
                    "learner_side_s": learner_s,  # the state in the object store
                    "engine_side_s": engine_s,  # fetch + load
                    "copy": copy,  # a plain copy of the same bytes
                    "loaded_by": engine.call_one(RolloutWorker.weights_loaded_by),
                    "generate_s": gen_s,
                    "median_generate_s": statistics.median(gen_s),
                    "tokens": tokens,  # answer tokens of each timed call
                    "tokens_per_s": sum(tokens) / sum(gen_s),
                }
                memory[f"engine_{how}"] = actor_peak_rss(engine)[0]
            finally:
                engine.shutdown()

        tok = AutoTokenizer.from_pretrained(path)
        examples = task_prompts(cfg.trainer.sft_batch_size)
        batch = sft_batch(tok, [e.prompt for e in examples], [e.gold for e in examples],
                          cfg.model.max_model_len)  # fmt: skip
        step_s = []
        for i in range(args.step_warmup + args.steps):
            started = time.perf_counter()
            learner.scatter(LearnerActor.train_step, shard(batch, 1), mode="sft")
            if i >= args.step_warmup:
                step_s.append(time.perf_counter() - started)
        memory["learner"] = actor_peak_rss(learner)[0]
    finally:
        first.shutdown()  # when setting up failed; a no-op once shut down
        learner.shutdown()
    out["same_answers"] = answers["merged"] == answers["adapter"]  # lora_B = 0: same model
    out["step_s"] = step_s
    out["median_step_s"] = statistics.median(step_s)
    memory["driver"] = peak_rss(children=False)  # its Ray cluster's processes are children
    out["peak_rss"] = memory
    return out


def _arrays(sent) -> list:
    packed = sent.tensors if hasattr(sent, "tensors") else sent
    return [a for a, _ in packed.values()]


def copy_baseline(arrays: list, threads: int, repeats: int) -> dict:
    """Seconds to copy ``arrays`` (the object-store buffers a sync sent) into preallocated,
    touched buffers of the same shapes and dtypes with ``threads`` torch threads; the first
    pass is a warm-up."""
    import torch

    torch.set_num_threads(threads)
    with warnings.catch_warnings():  # torch warns that the buffers are not writable
        warnings.simplefilter("ignore", UserWarning)
        src = [torch.from_numpy(a) for a in arrays]
    dst = [torch.zeros_like(s) for s in src]
    seconds = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
        seconds.append(time.perf_counter() - started)
    return {
        "bytes": sum(a.nbytes for a in arrays),
        "tensors": len(arrays),
        "seconds": seconds[1:],
        "median_s": statistics.median(seconds[1:]),
    }


def label(model: str) -> str:
    """A model's name in the table: a known name as given, a directory by its last part."""
    return Path(model).name if "/" in model else model


def main(argv=None) -> dict:
    ap = parser("lora_sync", __doc__)
    ap.add_argument("--model", default="smollm2-135m",
                    help="model directories or known names, comma-separated")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="learner and engine threads")
    ap.add_argument("--warmup", type=int, default=1, help="untimed syncs and generations")
    ap.add_argument("--repeats", type=int, default=3, help="timed syncs and generations")
    ap.add_argument("--prompts", type=int, default=8, help="greedy prompts per generation")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens per greedy answer")
    ap.add_argument("--step-warmup", type=int, default=1, help="untimed LoRA train steps")
    ap.add_argument("--steps", type=int, default=1, help="timed LoRA train steps")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.repeats, args.prompts, args.new_tokens = "builtin", 1, 2, 8
        args.step_warmup, args.steps = 0, 1
    from ray_s3ft.model.paths import resolve_model_path

    rows, details = [], {}
    with private_ray() as logs:
        for model in args.model.split(","):
            d = measure(args, resolve_model_path(model), logs)
            details[model] = d
            name, merged, adapter = label(model), d["merged"], d["adapter"]
            sync, step = adapter["median_sync_s"], d["median_step_s"]
            rows += [
                Row(f"{name}: adapter sync vs plain copy of its bytes", sync,
                    adapter["copy"]["median_s"], "s", ("<=", 3.0)),
                Row(f"{name}: adapter sync vs adapter sync + LoRA train step", sync,
                    sync + step, "s", ("<=", 0.01)),
                Row(f"{name}: sync, adapter vs merged", sync, merged["median_sync_s"], "s"),
                Row(f"{name}: merged sync vs plain copy of its bytes", merged["median_sync_s"],
                    merged["copy"]["median_s"], "s"),
                Row(f"{name}: bytes sent, adapter vs merged", adapter["bytes_sent"],
                    merged["bytes_sent"], "B"),
                Row(f"{name}: greedy decode, adapter engine vs plain (merged) engine",
                    adapter["tokens_per_s"], merged["tokens_per_s"], "tokens/s"),
            ]  # fmt: skip
            mem = d["peak_rss"]
            print(f"{name}: peak RSS (MiB, with child processes) learner "
                  f"{peak_mib(mem['learner']):.0f}, engine merged "
                  f"{peak_mib(mem['engine_merged']):.0f}, engine adapter "
                  f"{peak_mib(mem['engine_adapter']):.0f}, driver (so far) "
                  f"{peak_mib(mem['driver']):.0f}", flush=True)  # fmt: skip
    return report("lora_sync", args, rows, details)


if __name__ == "__main__":
    main()
