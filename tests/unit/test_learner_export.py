"""The copies a learner rank makes of its weights at a sync and at a reference reset
(``workers/learner_model.py``), on the built-in model with LoRA adapters, without DeepSpeed:
new memory only for the LoRA-merged layers, views of everything else."""

from types import SimpleNamespace

import torch

from ray_s3ft.config.schema import LearnerConfig, LoraConfig, ModelConfig
from ray_s3ft.model.paths import resolve_model_path
from ray_s3ft.workers.learner_model import ModelMixin

ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj")


def _rank(rank: int, zero_stage: int = 2) -> ModelMixin:
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    path = resolve_model_path("builtin")
    module = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        PeftLora(r=4, lora_alpha=8, target_modules=list(ADAPTED), task_type="CAUSAL_LM"),
    )
    for name, p in module.named_parameters():  # lora_B starts at 0: make the merge visible
        if "lora_B" in name:
            p.data.fill_(0.01)
    out = ModelMixin()
    out.rank, out.model_path = rank, path
    out.cfg = LearnerConfig(zero_stage=zero_stage)
    out.model_cfg = ModelConfig(path=path, lora=LoraConfig(enabled=True, r=4))
    out.engine = SimpleNamespace(module=module)
    return out


def _live(rank: ModelMixin) -> dict[str, int]:
    """HF name -> data pointer of the live base weight (names without PEFT's prefixes)."""
    from ray_s3ft.workers.learner_model import _merged_names

    return {k: v.data_ptr() for k, v in _merged_names(rank.engine.module.state_dict()).items()}


def test_a_sync_exports_on_rank_0_only_and_copies_only_the_merged_layers():
    rank = _rank(0)
    live = _live(rank)
    packed = rank.engine_weights()
    assert set(packed) == set(live)
    new = {k for k, (a, _) in packed.items() if a.ctypes.data != live[k]}
    # new memory: the adapted layers' W + delta W, nothing else (was: a clone of every weight)
    assert new == {k for k in live if k.split(".")[-2] in ADAPTED}
    assert _rank(1).engine_weights() is None  # the other ranks build nothing


def test_a_reference_reset_loads_views_of_the_live_weights():
    rank = _rank(0)
    live = _live(rank)
    seen = {}
    rank.reference = SimpleNamespace(
        load_state_dict=lambda sd, strict: seen.update({k: v.data_ptr() for k, v in sd.items()})
    )
    rank.reset_reference()
    copied = {k for k in live if seen[k] != live[k]}
    assert copied == {k for k in live if k.split(".")[-2] in ADAPTED}


def test_exported_values_are_the_merged_weights():
    rank = _rank(0)
    packed = rank.engine_weights()
    state = rank.engine.module.state_dict()
    key = next(k for k in packed if k.endswith("q_proj.weight"))
    base = state[f"base_model.model.{key.removesuffix('.weight')}.base_layer.weight"]
    assert not torch.equal(torch.from_numpy(packed[key][0]), base)  # delta W was added
