"""Weight sync: seconds per learner -> engine sync (the CPU path of ``sampling.WeightSync.to``:
``LearnerActor.engine_weights`` -> Ray's object store -> ``RolloutWorker.update_weights``,
into vLLM through the name map, ``rollout.weight_loader=name_map``), against a plain
in-memory copy of the same bytes, and as a share of the step. The paths before, in the same
run: the same numpy views into vLLM's ``reload_weights`` (``vllm_reload``), and torch
tensors (``LearnerActor.full_state_dict``) into ``reload_weights``.

Sizes: the built-in model, random Llamas (the built-in tokenizer, head_dim 64, fp32, saved
with ``save_pretrained`` so vLLM loads them) and the real SmolLM2-135M-Instruct
(``smollm2-135m``, fetched once); ``--model`` adds model directories or known names
(``qwen2.5-coder-0.5b``), measured after the sizes in the same run. The copy baseline copies
every tensor of the same state dict (same names, shapes, dtype: tied embeddings count twice,
as the sync sends them) into preallocated, already touched buffers, with the learner's thread
count, in one process.
The share is sync / (sync + one SFT ``train_step`` of that model on the default batch), a
GRPO step's learner part; a real step also samples and judges, so its share is smaller.
One learner rank (a larger model does not fit twice in 24 GiB), one engine. Peak resident
memory (``VmHWM``) of the learner rank, each engine and the driver is in the details
(``peak_rss``).
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import tempfile
import time
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

# name -> (hidden, layers, heads, ffn); parameters with the 640-token vocabulary, tied
SIZES = {
    "builtin": None,  # 1.1 M
    "tiny": (128, 2, 2, 256),  # 0.3 M, for --smoke
    "50m": (512, 15, 8, 1536),  # 51 M
    "150m": (1024, 12, 16, 2816),  # 155 M
    "500m": (1536, 18, 24, 4096),  # 510 M
    "smollm2-135m": "real",  # SmolLM2-135M-Instruct: 135 M, a 49 k vocabulary
}


def model_dir(name: str, root: Path) -> str:
    """The built-in model, a random Llama of size ``name`` saved under ``root``, or (a name
    not in ``SIZES``) a model directory or known name (``--model``)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.model.tiny import model_config

    builtin = resolve_model_path("builtin")
    if name not in SIZES:
        return resolve_model_path(name)
    if SIZES[name] is None:
        return builtin
    if SIZES[name] == "real":
        return resolve_model_path(name)
    hidden, layers, heads, ffn = SIZES[name]
    tok = AutoTokenizer.from_pretrained(builtin)
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_config(tok, hidden, layers, heads, ffn))
    out = root / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def copy_baseline(path: str, threads: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())  # tied weights once
    state = model.state_dict()
    src = [t.detach().clone() for t in state.values()]  # own storage, as the clones are
    dst = [torch.zeros_like(t) for t in src]
    seconds = []
    for _ in range(repeats + 1):  # the first pass is a warm-up
        started = time.perf_counter()
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
        seconds.append(time.perf_counter() - started)
    return {
        "bytes": sum(t.numel() * t.element_size() for t in src),
        "params": params,
        "seconds": seconds[1:],
        "median_s": statistics.median(seconds[1:]),
    }


def measure(args, name: str, path: str, logs: str) -> dict:
    import ray
    from transformers import AutoTokenizer

    from ray_s3ft.config import load_config
    from ray_s3ft.workers.batches import sft_batch, shard
    from ray_s3ft.workers.group import ActorGroup, Resources
    from ray_s3ft.workers.learner import LearnerActor
    from ray_s3ft.workers.rollout import RolloutWorker

    cfg = load_config(overrides=["schedule.kind=sft"])
    t = args.threads
    learner = one_learner(cfg, path, f"learner-{name}", t, logs)

    def engine(loader: str) -> ActorGroup:
        rollout_cfg = dataclasses.replace(cfg.rollout, weight_loader=loader)
        return ActorGroup(
            RolloutWorker, 1, name=f"rollout-{name}-{loader}", log_dir=logs,
            resources=Resources(1.0, 0.0, {"OMP_NUM_THREADS": "1"}),
            kwargs=dict(model_path=path, cfg=rollout_cfg, max_model_len=cfg.model.max_model_len,
                        max_prompt_tokens=cfg.data.max_prompt_tokens),
        )  # fmt: skip

    # the first engine starts while the learner sets up (one process each): nothing is timed
    # before both are up
    rollout, serving = engine("vllm_reload"), "vllm_reload"  # the engine and its weight_loader
    memory = {}

    def close(group: ActorGroup) -> None:  # its peak memory, then shut it down
        memory[f"engine_{serving}"] = actor_peak_rss(group)[0]
        group.shutdown()

    try:
        addr, port = learner.call_one(LearnerActor.master_address)
        learner.call(LearnerActor.setup, addr, port)
        rollout.call(RolloutWorker.weights_version)  # the engine is up
        timed = {}
        # before: torch tensors through the store, then numpy views (workers/weights.py), both
        # into vLLM's reload_weights; now: numpy views through the name map (vllm_weights.py)
        for how, fn, loader in (
            ("torch", LearnerActor.full_state_dict, "vllm_reload"),
            ("numpy", LearnerActor.engine_weights, "vllm_reload"),
            ("name_map", LearnerActor.engine_weights, "name_map"),
        ):
            if loader != serving:
                close(rollout)
                rollout, serving = engine(loader), loader
                rollout.call(RolloutWorker.weights_version)  # the engine is up
            state_s, load_s = [], []
            for version in range(1, args.warmup + args.repeats + 1):
                started = time.perf_counter()
                refs = learner.submit(fn)  # what sync_weights does
                ray.wait(refs[:1], fetch_local=False)
                stored = time.perf_counter()
                rollout.call(RolloutWorker.update_weights, version, refs[0])
                learner.wait(refs[1:])
                del refs
                if version > args.warmup:
                    state_s.append(stored - started)
                    load_s.append(time.perf_counter() - stored)
            timed[how] = (state_s, load_s, rollout.call_one(RolloutWorker.weights_loaded_by))
        close(rollout)  # its memory, before the optimizer state is allocated

        tok = AutoTokenizer.from_pretrained(path)
        n = cfg.trainer.sft_batch_size
        examples = task_prompts(n)
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
        rollout.shutdown()
        learner.shutdown()
    memory["driver"] = peak_rss(children=False)  # its Ray cluster's processes are children
    out = {"step_s": step_s, "median_step_s": statistics.median(step_s), "peak_rss": memory}
    for how, (state_s, load_s, loaded_by) in timed.items():
        sync = [a + b for a, b in zip(state_s, load_s, strict=True)]
        out[how] = {
            "sync_s": sync,
            "median_sync_s": statistics.median(sync),
            "learner_side_s": state_s,  # the state dict and its put into the object store
            "engine_side_s": load_s,  # fetch + the engine's load + prefix-cache reset
            "loaded_by": loaded_by,  # name_map, or vllm_reload (asked, or fallen back to)
        }
    return out


def main(argv=None) -> dict:
    ap = parser("weight_sync", __doc__)
    ap.add_argument(
        "--sizes",
        default=None,
        help=f"of {', '.join(SIZES)} (default builtin,50m,150m,500m; none with --model alone)",
    )
    ap.add_argument(
        "--model",
        default="",
        help="model directories or known names, comma-separated, after the sizes",
    )
    ap.add_argument("--threads", type=int, default=2, help="learner (and copy) threads")
    ap.add_argument("--warmup", type=int, default=1, help="untimed syncs")
    ap.add_argument("--repeats", type=int, default=3, help="timed syncs")
    ap.add_argument("--step-warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="timed train steps")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats, args.step_warmup, args.steps = "tiny", 1, 0, 1
    if args.sizes is None:
        args.sizes = "" if args.model else "builtin,50m,150m,500m"
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = set(sizes) - set(SIZES)
    if unknown:
        ap.error(f"unknown sizes {sorted(unknown)}")
    sizes += [m for m in args.model.split(",") if m]

    rows, details = [], {}
    with tempfile.TemporaryDirectory(prefix="rb-models-") as root, private_ray() as logs:
        for name in sizes:
            path = model_dir(name, Path(root))
            copy = copy_baseline(path, args.threads, 2 * args.repeats)
            gc.collect()
            ours = measure(args, name, path, logs)
            details[name] = {"copy": copy, **ours}
            gb = copy["bytes"] / 1e9
            short = Path(name).name if "/" in name else name
            label = f"{short} ({copy['params'] / 1e6:.1f} M params, {gb:.2f} GB)"
            sync, step = ours["name_map"]["median_sync_s"], ours["median_step_s"]
            reload, before = ours["numpy"]["median_sync_s"], ours["torch"]["median_sync_s"]
            rows += [
                Row(f"{label}: sync vs plain copy", sync, copy["median_s"], "s", ("<=", 3.0)),
                Row(f"{label}: sync vs sync + train step", sync, sync + step, "s",
                    ("<=", 0.05)),
                Row(f"{label}: sync, name map vs vLLM reload_weights", sync, reload, "s"),
                Row(f"{label}: reload_weights sync, numpy views vs torch tensors", reload,
                    before, "s"),
            ]  # fmt: skip
            print(f"{label}: sync {sync:.3f} s (reload_weights: {reload:.3f} s, with torch "
                  f"tensors: {before:.3f} s), copy {copy['median_s']:.4f} s, "
                  f"train step {step:.2f} s", flush=True)  # fmt: skip
            mem = ours["peak_rss"]
            print(f"{label}: peak RSS (MiB, with child processes) learner "
                  f"{peak_mib(mem['learner']):.0f}, engine vllm_reload "
                  f"{peak_mib(mem['engine_vllm_reload']):.0f}, engine name_map "
                  f"{peak_mib(mem['engine_name_map']):.0f}, driver (so far) "
                  f"{peak_mib(mem['driver']):.0f}", flush=True)  # fmt: skip
    return report("weight_sync", args, rows, details)


if __name__ == "__main__":
    main()
