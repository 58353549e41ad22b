"""LoRA weight sync: seconds per learner -> engine sync with ``rollout.lora_sync=adapter`` (the
adapters alone: ``LearnerActor.engine_adapter`` -> Ray's object store ->
``RolloutWorker.update_adapter``, a PEFT adapter directory into vLLM's LoRA) against
``merged`` (``LearnerActor.engine_weights``, the adapters merged into full weights ->
``RolloutWorker.update_weights``, into a plain engine through the name map), and what serving
the adapters costs a generation: greedy decoding of the same prompts on each engine after its
sync.

SmolLM2-135M-Instruct (``smollm2-135m``, fetched once; ``--smoke``: the built-in model), LoRA
r = 8 on q, k, v, o (``model.lora`` defaults), one learner rank, one engine at a time.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from bench.common import Row, one_learner, parser, private_ray, report, task_prompts


def measure(args, path: str, logs: str) -> dict:
    import ray

    from ray_s3ft.config import load_config
    from ray_s3ft.workers.group import ActorGroup, Resources
    from ray_s3ft.workers.learner import LearnerActor
    from ray_s3ft.workers.rollout import RolloutWorker

    cfg = load_config(overrides=["schedule.kind=sft", "model.lora.enabled=true"])
    t = args.threads
    learner = one_learner(cfg, path, "learner-lora", t, logs)
    prompts = [e.prompt for e in task_prompts(args.prompts)]
    out = {}
    try:
        addr, port = learner.call_one(LearnerActor.master_address)
        learner.call(LearnerActor.setup, addr, port)
        for how, send, load in (
            ("merged", LearnerActor.engine_weights, RolloutWorker.update_weights),
            ("adapter", LearnerActor.engine_adapter, RolloutWorker.update_adapter),
        ):
            rollout_cfg = dataclasses.replace(cfg.rollout, lora_sync=how)
            engine = ActorGroup(
                RolloutWorker, 1, name=f"rollout-{how}", log_dir=logs,
                resources=Resources(1.0, 0.0, {"OMP_NUM_THREADS": str(t)}),
                kwargs=dict(model_path=path, cfg=rollout_cfg,
                            max_model_len=cfg.model.max_model_len,
                            max_prompt_tokens=cfg.data.max_prompt_tokens, threads=t,
                            lora_rank=cfg.model.lora.r if how == "adapter" else None),
            )  # fmt: skip
            try:
                engine.call(RolloutWorker.weights_version)  # the engine is up
                learner_s, engine_s, sent = [], [], 0
                for version in range(1, args.warmup + args.repeats + 1):
                    started = time.perf_counter()
                    refs = learner.submit(send)
                    ray.wait(refs[:1], fetch_local=False)
                    stored = time.perf_counter()
                    engine.call(load, version, refs[0])
                    if version > args.warmup:
                        learner_s.append(stored - started)
                        engine_s.append(time.perf_counter() - stored)
                    if version == 1:
                        sent = _bytes(ray.get(refs[0]))
                    del refs
                gen_s = []
                for i in range(args.warmup + args.repeats):
                    started = time.perf_counter()
                    engine.call_one(RolloutWorker.greedy_tokens, prompts, args.new_tokens)
                    if i >= args.warmup:
                        gen_s.append(time.perf_counter() - started)
                sync = [a + b for a, b in zip(learner_s, engine_s, strict=True)]
                out[how] = {
                    "bytes_sent": sent,
                    "sync_s": sync,
                    "median_sync_s": statistics.median(sync),
                    "learner_side_s": learner_s,  # the state in the object store
                    "engine_side_s": engine_s,  # fetch + load
                    "loaded_by": engine.call_one(RolloutWorker.weights_loaded_by),
                    "generate_s": gen_s,
                    "median_generate_s": statistics.median(gen_s),
                }
            finally:
                engine.shutdown()
    finally:
        learner.shutdown()
    return out


def _bytes(sent) -> int:
    packed = sent.tensors if hasattr(sent, "tensors") else sent
    return sum(a.nbytes for a, _ in packed.values())


def main(argv=None) -> dict:
    ap = parser("lora_sync", __doc__)
    ap.add_argument("--model", default="smollm2-135m", help="builtin or smollm2-135m")
    ap.add_argument("--threads", type=int, default=2, help="learner and engine threads")
    ap.add_argument("--warmup", type=int, default=1, help="untimed syncs and generations")
    ap.add_argument("--repeats", type=int, default=3, help="timed syncs and generations")
    ap.add_argument("--prompts", type=int, default=8, help="greedy prompts per generation")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens per greedy answer")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.repeats, args.prompts, args.new_tokens = "builtin", 1, 2, 8
    from ray_s3ft.model.paths import resolve_model_path

    path = resolve_model_path(args.model)
    with private_ray() as logs:
        d = measure(args, path, logs)
    merged, adapter = d["merged"], d["adapter"]
    rows = [
        Row(f"{args.model}: sync, adapter vs merged", adapter["median_sync_s"],
            merged["median_sync_s"], "s"),
        Row(f"{args.model}: bytes sent, adapter vs merged", adapter["bytes_sent"],
            merged["bytes_sent"], "B"),
        Row(f"{args.model}: greedy generation, adapter vs merged", adapter["median_generate_s"],
            merged["median_generate_s"], "s"),
    ]  # fmt: skip
    return report("lora_sync", args, rows, d)


if __name__ == "__main__":
    main()
