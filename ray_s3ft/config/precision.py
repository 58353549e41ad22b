"""``model.dtype: auto`` and ``rollout.tis: auto``, resolved once by ``load_config`` in the
driver, so that the saved config, its fingerprints and every role see the real values.

``model.dtype: auto`` is the bf16 profile: bf16 on each side whose device computes it natively,
else float32. The learner's side (``model.dtype``, ``learner.bf16``: DeepSpeed's mixed precision,
fp32 master weights) follows the learner's device, the engines' side (``rollout.dtype``) theirs:
a CPU with AVX512_BF16 or AMX (its ``/proc/cpuinfo`` flags), a GPU for which
``torch.cuda.is_bf16_supported()``. A CPU without bf16 units emulates every bf16 matmul through
fp32 and runs it several times slower than fp32 (BENCHMARKS.md §7), hence float32 there.

Explicit ``bfloat16`` on such a CPU is a warning, not an error: the numbers are right, only slow,
and the driver's CPU is not always the CPU of the nodes the roles run on.

``rollout.tis: auto`` is "always" where the learner or the engines compute below fp32: their
logprobs of the same tokens then differ by more than the policy moves in a step, and the
truncated importance weights correct for it (docs/methods.md §4); else "stale".

Standard library only, like the schema; torch is imported only to ask about a GPU.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from ray_s3ft.config.schema import Config

log = logging.getLogger(__name__)

# /proc/cpuinfo flags of native bf16 arithmetic (AVX512_BF16 dot products, AMX tiles)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_units(cpuinfo: str | None = None) -> list[str]:
    """The bf16 flags of this CPU (``BF16_CPU_FLAGS``; empty: bf16 is emulated, or no
    ``/proc/cpuinfo`` to read)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return [f for f in BF16_CPU_FLAGS if f in flags]
    return []


def native_bf16(gpu: bool) -> bool | None:
    """Whether the driver's device of this kind computes bf16 natively; None: a GPU was asked
    about and the driver sees none (the GPUs are on other nodes)."""
    if not gpu:
        return bool(cpu_bf16_units())
    import torch

    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None


def resolve(cfg: Config, native: Callable[[bool], bool | None] = native_bf16) -> Config:
    """``cfg`` (validated) with ``auto`` resolved (module docstring); ``native(gpu)``: whether
    a device computes bf16 natively, None if unknown."""
    m, ro, le, res = cfg.model, cfg.rollout, cfg.learner, cfg.resources

    def side(key: str, gpus: float) -> str:
        here = native(gpus > 0)
        if here is None:
            log.warning(
                "%s: auto resolves to float32: the driver sees no GPU to ask about bf16; "
                "set bfloat16 where the GPUs have it",
                key,
            )
        return "bfloat16" if here else "float32"

    if m.dtype == "auto":
        dtype = side("model.dtype", res.gpus_per_learner)
        m = dataclasses.replace(m, dtype=dtype)
        le = dataclasses.replace(le, bf16=le.bf16 or dtype == "bfloat16")
        ro = dataclasses.replace(ro, dtype=side("rollout.dtype", res.gpus_per_rollout))
    else:
        _warn_emulated(m.dtype == "bfloat16", "model.dtype=bfloat16", res.gpus_per_learner, native)
        _warn_emulated(le.bf16, "learner.bf16=true", res.gpus_per_learner, native)
        _warn_emulated(
            ro.dtype == "bfloat16", "rollout.dtype=bfloat16", res.gpus_per_rollout, native
        )
    if ro.tis == "auto":
        low = le.bf16 or m.dtype != "float32" or ro.dtype != "float32"
        ro = dataclasses.replace(ro, tis="always" if low else "stale")
    return dataclasses.replace(cfg, model=m, rollout=ro, learner=le)


def _warn_emulated(bf16: bool, what: str, gpus: float, native) -> None:
    if bf16 and gpus == 0 and not native(False):
        log.warning(
            "%s: this CPU has no bf16 units (%s): bf16 matmuls are emulated, several times "
            "slower than float32 (model.dtype=auto picks float32 here)",
            what,
            " / ".join(BF16_CPU_FLAGS),
        )
