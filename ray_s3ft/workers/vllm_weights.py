"""Weights into a running vLLM engine through a name map built once (``rollout.weight_loader:
name_map``), instead of vLLM's layerwise ``reload_weights`` (``vllm_reload``).

The learner sends HF-named tensors. ``q_proj`` / ``k_proj`` / ``v_proj`` and ``gate_proj`` /
``up_proj`` are rows of vLLM's fused ``qkv_proj`` and ``gate_up_proj``, stacked in the order
of the model's ``packed_modules_mapping``; every other tensor is the vLLM parameter of the same
name. ``plan`` turns the names and shapes into targets (vLLM module, parameter, HF names with
their rows) once; a load then only copies, and the plan is reused while the names and shapes
stay the same.

On CPU, vLLM packs each linear layer's weight for its GEMM kernel (oneDNN or sgl-kernel) and
drops the plain weight (``dispatch_cpu_unquantized_gemm``): a load sets the fused weight again
and has the layer's own ``process_weights_after_loading`` pack it. That repack is what stays of
a CPU load's cost. On GPU the rows are copied into the live parameters (CUDA graphs keep their
addresses).

The fast path is for an unquantized model on one rank without vLLM's LoRA; for anything else,
or any name or shape the plan cannot place, the engine falls back to ``reload_weights``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    module: str  # the vLLM module's path
    param: str  # its parameter ("weight", "bias")
    parts: tuple[tuple[str, int, int], ...]  # (HF name, first row, rows), in row order

    @property
    def rows(self) -> int:
        return sum(n for _, _, n in self.parts)


def plan(
    shapes: Mapping[str, tuple[int, ...]],
    params: Mapping[str, tuple[int, ...]],
    packed: Mapping[str, list[str]],
    tied: bool,
    padded: Collection[str],
) -> list[Target] | str:
    """Where each HF tensor goes, or why it cannot be placed (a message).

    ``shapes``: HF name -> shape of what the learner sends; ``params``: vLLM parameter name ->
    the shape vLLM expects (its rows, the layer's width); ``packed``: fused module -> the HF
    modules stacked in it; ``tied``: the output layer shares the embedding (an HF
    ``lm_head.weight`` is then not loaded twice); ``padded``: the vLLM parameters whose rows
    are the vocabulary, which vLLM pads: they may get fewer rows than they hold, every other
    one exactly its rows."""
    direct, fused = [], {}
    for name, shape in shapes.items():
        module, _, param = name.rpartition(".")
        if name in params:
            direct.append(Target(module, param, ((name, 0, shape[0]),)))
            continue
        if tied and name == "lm_head.weight":
            continue
        parent, _, leaf = module.rpartition(".")
        key = next((k for k, subs in packed.items() if leaf in subs), None)
        if key is None or f"{parent}.{key}.{param}" not in params:
            return f"no vLLM parameter for {name}"
        fused.setdefault((f"{parent}.{key}", param, key), {})[packed[key].index(leaf)] = name
    targets = list(direct)
    for (module, param, key), names in fused.items():
        if sorted(names) != list(range(len(packed[key]))):
            missing = [s for i, s in enumerate(packed[key]) if i not in names]
            return f"{module}.{param}: no {', '.join(missing)} in the weights"
        parts, first = [], 0
        for i in range(len(packed[key])):
            n = shapes[names[i]][0]
            parts.append((names[i], first, n))
            first += n
        targets.append(Target(module, param, tuple(parts)))
    placed = {f"{t.module}.{t.param}" for t in targets}
    if set(params) - placed:
        return f"nothing sent for {sorted(set(params) - placed)[0]}"
    for t in targets:
        key, name = f"{t.module}.{t.param}", t.parts[0][0]
        want = params[key]
        # vLLM pads the vocabulary rows of its embeddings: at least the rows sent
        rows = t.rows <= want[0] if key in padded else t.rows == want[0]
        if not rows or tuple(shapes[name][1:]) != tuple(want[1:]):
            sent = (t.rows, *shapes[name][1:])
            return f"{t.module}.{t.param}: {sent} sent, vLLM holds {tuple(want)}"
    return targets


def _expected_shapes(model) -> dict[str, tuple[int, ...]]:
    """Each vLLM parameter's full shape: a CPU-packed linear layer's dropped weight (0
    elements) by the layer's partition sizes."""
    out = {}
    for name, p in model.named_parameters():
        if p.numel() == 0 and name.endswith(".weight"):
            mod = model.get_submodule(name.rpartition(".")[0])
            rows = getattr(mod, "output_size_per_partition", None)
            cols = getattr(mod, "input_size_per_partition", None)
            if rows is None or cols is None:
                return {}
            out[name] = (rows, cols)
        else:
            out[name] = tuple(p.shape)
    return out


def _vocab_params(model) -> set[str]:
    """The parameters of the embedding and output layers, whose rows vLLM pads."""
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    return {
        f"{name}.{param}"
        for name, mod in model.named_modules()
        if isinstance(mod, VocabParallelEmbedding)
        for param, _ in mod.named_parameters(recurse=False)
    }


def _why_not(vllm_config) -> str | None:
    if vllm_config.model_config.quantization is not None:
        return "a quantized model"
    par = vllm_config.parallel_config
    if par.tensor_parallel_size != 1 or par.pipeline_parallel_size != 1:
        return "more than one rank"
    if vllm_config.lora_config is not None:
        return "vLLM LoRA"
    return None


# id(model) -> (names and shapes, the plan or why none, the modules repacked besides its targets)
_PLANS: dict[int, tuple[tuple, list[Target] | str, list[str]]] = {}


def load_in_worker(worker: Any, weights: list[tuple[str, Any]]) -> str | None:
    """Run inside the vLLM worker (``LLM.collective_rpc``): load ``weights`` through the plan.
    Returns None when loaded, else why not (nothing was changed: the caller falls back)."""
    import torch

    model = worker.model_runner.get_model()
    why = _why_not(worker.vllm_config)
    if why:
        return why
    w = dict(weights)
    key = tuple((n, tuple(t.shape)) for n, t in w.items())
    cached = _PLANS.get(id(model))
    if cached is None or cached[0] != key:
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        packed = dict(getattr(model, "packed_modules_mapping", None) or {})
        made = plan(dict(key), _expected_shapes(model), packed, tied, _vocab_params(model))
        sharing = [] if isinstance(made, str) else _sharing(model, made)
        _PLANS[id(model)] = cached = (key, made, sharing)
    _, targets, sharing = cached
    if isinstance(targets, str):
        return targets
    with torch.no_grad():
        for t in targets:
            _load_target(model.get_submodule(t.module), t, w)
        for name in sharing:
            mod = model.get_submodule(name)
            mod.quant_method.process_weights_after_loading(mod)
    return None


def _sharing(model, targets: list[Target]) -> list[str]:
    """CPU-packed modules no target names whose weight is a loaded parameter: a tied output
    layer, which holds its own packed copy of the embedding."""
    loaded = {id(getattr(model.get_submodule(t.module), t.param)) for t in targets}
    named = {t.module for t in targets}
    return [
        name
        for name, mod in model.named_modules()
        if name not in named and _packed(mod) and id(getattr(mod, "weight", None)) in loaded
    ]


def _packed(mod) -> bool:
    """A CPU-packed linear layer. An input embedding is packed too, but only an output layer
    multiplies by it (a tied one has its own packed copy, ``_sharing``): not repacked."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    lookup = isinstance(mod, VocabParallelEmbedding) and not isinstance(mod, ParallelLMHead)
    return hasattr(mod, "cpu_linear") and not lookup


def _load_target(mod, t: Target, w: dict) -> None:
    import torch

    param = getattr(mod, t.param)
    repack = t.param == "weight" and _packed(mod)
    if repack and param.numel() == 0:  # packed on CPU, the plain weight dropped
        parts = [w[name] for name, _, _ in t.parts]
        full = torch.cat(parts) if len(parts) > 1 else parts[0].clone()
        full = full.to(device=param.device, dtype=param.dtype)
        mod.weight = torch.nn.Parameter(full, requires_grad=False)
    else:
        for name, first, n in t.parts:
            param.data[first : first + n].copy_(w[name])
    if repack:
        mod.quant_method.process_weights_after_loading(mod)
