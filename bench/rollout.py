"""Rollout: tokens/s through a ``RolloutWorker`` actor against the same vLLM engine called
directly in-process, on the same prompts and sampling.

Both sides build the engine with ``ray_s3ft.workers.engines.VLLMEngine`` (the same LLM kwargs
and environment: in-process engine core, KV cache budget, fp32, eager, seed, one OMP thread as
``ray-s3ft train`` gives the rollout actor), get the same token ids (``encode_prompts``) and the
same per-prompt seeded SamplingParams, so they sample the same tokens (checked). The baseline
calls ``LLM.generate`` in a process of its own; the actor is then called as the controller calls
it (``ActorGroup.map_chunks(RolloutWorker.sample)``, ray.get included). One engine at a time.
Every timed call gets new prompts (no prefix-cache reuse across calls), as a training step does.

A second baseline, in the same side process after vLLM: ``transformers``' ``generate`` on the
same prompt ids and sampling, through the project's ``HFEngine`` without logprobs (the whole
call as one left-padded batch, ``num_return_sequences`` samples each, no scores kept: its
fastest form), tokens counted up to each sample's end of sequence. It samples other tokens
(another random stream), so only the rate is compared.
``--model`` picks the model (a known name such as ``smollm2-135m`` is fetched once);
``--threads`` the engine's torch threads on both sides.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, parser, private_ray, report, task_prompts

MAX_MODEL_LEN, MAX_PROMPT_TOKENS = 512, 256  # model.max_model_len, data.max_prompt_tokens


def _calls(args, prompts: int) -> list[list[tuple[str, int]]]:
    """(prompt, seed) items of each call, warm-up calls first: the controller's seeds."""
    from ray_s3ft.run.sampling import rollout_seed

    n = args.warmup + args.repeats
    examples = task_prompts(n * prompts)
    return [
        [(examples[c * prompts + i].prompt, rollout_seed(0, c, i)) for i in range(prompts)]
        for c in range(n)
    ]


def _digest(token_lists) -> str:
    h = hashlib.sha256()
    for t in token_lists:
        h.update(json.dumps(list(t)).encode())
    return h.hexdigest()[:16]


def _timed(args, calls, fn) -> dict:
    """Run ``fn(items) -> token id lists`` on every call; time the calls after the warm-up."""
    seconds, tokens, digests = [], [], []
    for k, items in enumerate(calls):
        started = time.perf_counter()
        out = fn(items)
        elapsed = time.perf_counter() - started
        if k >= args.warmup:
            seconds.append(elapsed)
            tokens.append(sum(len(t) for t in out))
            digests.append(_digest(out))
    return {
        "tokens_per_s": sum(tokens) / sum(seconds),
        "seconds": seconds,
        "tokens": tokens,
        "digest": _digest(digests),
    }


def _sampling(args):
    from ray_s3ft.workers.types import Sampling

    return Sampling(n=args.group_size, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new)


def direct(args) -> None:
    """The baseline, in this process: vLLM's ``LLM.generate`` on the engine ``VLLMEngine``
    builds; then our in-process wrapper ``VLLMEngine.generate`` on the same engine."""
    import torch
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from ray_s3ft.config import load_config
    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.workers.engines import HFEngine, VLLMEngine, encode_prompts

    torch.set_num_threads(args.threads)  # before the engine starts, as RolloutWorker does
    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    engine = VLLMEngine(path, load_config().rollout, MAX_MODEL_LEN, False, False)
    s = _sampling(args)
    out = {}
    for prompts in args.prompts:
        calls = _calls(args, prompts)

        def vllm_direct(items):
            ids = encode_prompts(tok, [p for p, _ in items], MAX_PROMPT_TOKENS)
            params = [
                SamplingParams(
                    n=s.n,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    max_tokens=s.max_new_tokens,
                    logprobs=0,
                    seed=seed,
                )
                for _, seed in items
            ]
            outs = engine.llm.generate(
                [{"prompt_token_ids": x} for x in ids], params, use_tqdm=False
            )
            return [c.token_ids for o in outs for c in o.outputs]

        def wrapper(items):
            ids = encode_prompts(tok, [p for p, _ in items], MAX_PROMPT_TOKENS)
            gens = engine.generate(ids, s, tok, [seed for _, seed in items])
            return [g.token_ids for g in gens]

        out[prompts] = {"vllm": _timed(args, calls, vllm_direct)}
        out[prompts]["wrapper"] = _timed(args, calls, wrapper)
    # the project's transformers backend, text only: one left-padded batch per call, no scores
    hf = HFEngine(path, load_config().rollout, MAX_MODEL_LEN, False, False)
    text_only = dataclasses.replace(s, logprobs=False)

    def hf_generate(items):
        ids = encode_prompts(tok, [p for p, _ in items], MAX_PROMPT_TOKENS)
        return [g.token_ids for g in hf.generate(ids, text_only, tok, None)]

    for prompts in args.prompts:
        out[prompts]["hf"] = _timed(args, _calls(args, prompts), hf_generate)
    args.side_out.write_text(json.dumps(out))


def actor(args, logs: str) -> dict:
    from ray_s3ft.config import load_config
    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.workers.group import ActorGroup, Resources
    from ray_s3ft.workers.rollout import RolloutWorker

    group = ActorGroup(
        RolloutWorker, 1, name="rollout", log_dir=logs,
        resources=Resources(1.0, 0.0, {"OMP_NUM_THREADS": "1"}),  # cluster.launch's
        kwargs=dict(model_path=resolve_model_path(args.model), cfg=load_config().rollout,
                    max_model_len=MAX_MODEL_LEN, max_prompt_tokens=MAX_PROMPT_TOKENS,
                    threads=args.threads),
    )  # fmt: skip
    s = _sampling(args)
    inside: list[float] = []  # RolloutResult.seconds: the call as the actor timed it

    def call(items):
        parts = group.map_chunks(RolloutWorker.sample, items, sampling=s)
        inside.append(sum(p.seconds for p in parts))
        return [g.token_ids for p in parts for g in p.generations]

    out = {}
    try:
        for prompts in args.prompts:
            inside.clear()
            out[prompts] = _timed(args, _calls(args, prompts), call)
            out[prompts]["in_actor_s"] = inside[args.warmup :]
        return out
    finally:
        group.shutdown()


def main(argv=None) -> dict:
    ap = parser("rollout", __doc__)
    ap.add_argument("--model", default="builtin", help="model directory or known name")
    ap.add_argument("--threads", type=int, default=1, help="the engine's torch threads")
    ap.add_argument("--prompts", default="4,16", help="prompts per call, one size per row")
    ap.add_argument("--group-size", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", dest="max_new", type=int, default=96)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)  # the baseline process
    args = ap.parse_args(argv)
    if args.smoke:
        args.prompts, args.group_size, args.max_new, args.repeats = "2", 2, 16, 1
    args.prompts = [int(x) for x in str(args.prompts).split(",")]
    if args.side_out:
        return direct(args)

    from ray_s3ft.run.cluster import worker_env

    with tempfile.TemporaryDirectory(prefix="rb-") as tmp:
        side = Path(tmp) / "direct.json"
        env = {**os.environ, **worker_env(Path(tmp)), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "bench.rollout", *(argv or sys.argv[1:])]
        r = subprocess.run([*cmd, "--side-out", str(side)], env=env, capture_output=True)
        if r.returncode:
            sys.exit(f"the baseline process failed:\n{r.stderr.decode()[-4000:]}")
        base = {int(k): v for k, v in json.loads(side.read_text()).items()}
    with private_ray() as logs:
        ours = actor(args, logs)

    rows, details = [], {}
    for p in args.prompts:
        label = f"{p} prompts x {args.group_size}"
        rows.append(
            Row(f"actor vs vLLM direct, {label}", ours[p]["tokens_per_s"],
                base[p]["vllm"]["tokens_per_s"], "tokens/s", (">=", 0.95))
        )  # fmt: skip
        rows.append(
            Row(f"VLLMEngine in-process vs vLLM direct, {label}",
                base[p]["wrapper"]["tokens_per_s"], base[p]["vllm"]["tokens_per_s"], "tokens/s")
        )  # fmt: skip
        rows.append(
            Row(f"actor vs transformers.generate, {label}", ours[p]["tokens_per_s"],
                base[p]["hf"]["tokens_per_s"], "tokens/s")
        )  # fmt: skip
        same = ours[p]["digest"] == base[p]["vllm"]["digest"] == base[p]["wrapper"]["digest"]
        details[p] = {"actor": ours[p], **base[p], "same_tokens": same}
        if not same:
            print(f"warning: {label}: the sides sampled different tokens", file=sys.stderr)
    return report("rollout", args, rows, details)


if __name__ == "__main__":
    main()
