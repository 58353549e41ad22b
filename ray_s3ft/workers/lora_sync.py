"""LoRA adapters, not merged weights, from the learner to the vLLM engines
(``rollout.lora_sync: adapter``).

With r = 8 on the attention projections about 1 % of a model's parameters change; a merged
sync sends (and vLLM repacks) all of them. Here the engine keeps the base weights it started
with and serves the adapters through vLLM's LoRA (``enable_lora``; on CPU its
``PunicaWrapperCPU``); each sync sends PEFT's adapter state dict alone and every request of
the engine names the current one (``LoRARequest``).

The learner sends the adapters as PEFT saves them: ``get_peft_model_state_dict`` names
(``base_model.model.<module>.lora_A.weight`` [r, in], ``lora_B.weight`` [out, r]) and its
``adapter_config.json``; vLLM reads those names itself (``parse_fine_tuned_lora_name``: the
prefix dropped, ``q_proj`` / ``k_proj`` / ``v_proj`` stacked into its fused ``qkv_proj``).
vLLM 0.32 takes an adapter only from a directory: ``LoRARequest`` holds a path (it asserts
one) and the worker loads it with ``LoRAModel.from_local_checkpoint``; handing it tensors
would go through the worker's private adapter manager. So each version is written as a PEFT
adapter directory in a temp dir of the engine's process (a few MB: milliseconds), under a
fresh adapter id, and the one it replaces is removed.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import weakref
from pathlib import Path

from ray_s3ft.config.schema import VLLM_LORA_RANKS


def engine_lora_rank(r: int) -> int:
    """The rank a vLLM engine is started for (``max_lora_rank``): vLLM allows only
    ``VLLM_LORA_RANKS``, so the smallest of them that holds an adapter of rank ``r`` (a
    smaller adapter is zero-padded into its slots)."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"LoRA rank {r} > {VLLM_LORA_RANKS[-1]}, the largest vLLM serves")


def adapter_state(module, dtype) -> tuple[dict, str]:
    """A PEFT model's active adapter as PEFT saves it: (state dict: new CPU tensors in
    ``dtype``, adapter_config.json's text)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(module)
    tensors = {k: v.detach().to("cpu", dtype).clone() for k, v in state.items()}
    return tensors, config_json(module.peft_config[module.active_adapter].to_dict())


def config_json(config: dict) -> str:
    """PEFT's config dict as its ``save_pretrained`` writes it: sets (``target_modules``)
    become sorted lists; enums (``peft_type``, ``task_type``) are ``str`` and dump as their
    values."""
    return json.dumps(
        {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}, indent=2
    )


class AdapterDirs:
    """One engine's adapter versions as PEFT adapter directories under a temp dir of its own
    (removed with this object or at exit): ``add`` writes the next under a fresh id (vLLM
    caches adapters by id), ``remove`` deletes one the engine has let go."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ray_s3ft-lora-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, True)
        self._ids = itertools.count(1)  # vLLM's ids start at 1

    def add(self, tensors: dict, config: str) -> tuple[int, str]:
        """(adapter id, its directory)."""
        from safetensors.torch import save_file

        lora_id = next(self._ids)
        path = self.root / f"v{lora_id}"
        path.mkdir()
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, path / "adapter_model.safetensors"
        )
        (path / "adapter_config.json").write_text(config)
        return lora_id, str(path)

    def remove(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)
