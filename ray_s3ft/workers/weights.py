"""Weights on their way from learner rank 0 to the rollout engines (CPU path, Ray's object store).

A torch tensor returned from an actor is pickled (a copy), written to the store (a copy) and
unpickled into new memory on the engine (a copy). A numpy array goes into the store with one
copy and the engine reads it in place, so the weights are packed as numpy arrays: one copy into
the store, one into the engine's own parameters. numpy has no bfloat16: those travel as int16
bit patterns and are viewed back.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

Packed = dict[str, tuple[np.ndarray, str]]  # HF name -> (array, torch dtype name)


@dataclass(frozen=True)
class Adapter:
    """LoRA adapters for engines that serve them (``rollout.lora_sync=adapter``,
    ``workers/lora_sync.py``)."""

    # PEFT names: base_model.model.<module>.lora_A.weight [r, in], .lora_B.weight [out, r]
    tensors: Packed
    config: str  # PEFT's adapter_config.json


def pack(state: dict[str, torch.Tensor]) -> Packed:
    """Views, not copies, of contiguous CPU tensors."""
    out = {}
    for name, t in state.items():
        t = t.detach().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        out[name] = ((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy(), dtype)
    return out


def unpack(packed: Packed) -> dict[str, torch.Tensor]:
    """Tensors over the arrays' memory (read-only object-store buffers: the engine copies them
    into its parameters and must not write to them)."""
    out = {}
    with warnings.catch_warnings():  # torch warns that the buffers are not writable
        warnings.simplefilter("ignore", UserWarning)
        for name, (array, dtype) in packed.items():
            t = torch.from_numpy(array)
            out[name] = t.view(torch.bfloat16) if dtype == "bfloat16" else t
    return out


def is_packed(weights: dict) -> bool:
    return bool(weights) and isinstance(next(iter(weights.values())), tuple)
