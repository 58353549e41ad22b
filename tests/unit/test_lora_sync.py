"""LoRA adapters to the engines (``rollout.lora_sync=adapter``, ``workers/lora_sync.py``): the
rank vLLM is started for, the config rules, the adapter the learner sends (PEFT's names, a
directory PEFT itself loads back to the same model) and which calls a sync makes."""

import json
from pathlib import Path

import pytest
import torch

from ray_s3ft.config import ConfigError, load_config
from ray_s3ft.run.weight_sync import WeightSync
from ray_s3ft.workers.learner import LearnerActor
from ray_s3ft.workers.lora_sync import AdapterDirs, adapter_state, engine_lora_rank
from ray_s3ft.workers.rollout import RolloutWorker
from ray_s3ft.workers.weights import pack, unpack


@pytest.mark.parametrize(
    ("r", "rank"), [(1, 1), (2, 8), (8, 8), (9, 16), (64, 64), (257, 320), (321, 512), (512, 512)]
)
def test_the_engine_rank_is_the_smallest_vllm_rank_that_holds_the_adapter(r, rank):
    assert engine_lora_rank(r) == rank


def test_an_adapter_above_vllms_largest_rank_is_refused():
    with pytest.raises(ValueError, match="513 > 512"):
        engine_lora_rank(513)


def test_lora_sync_defaults_to_merged_and_adapter_needs_lora_and_vllm():
    assert load_config().rollout.lora_sync == "merged"
    ok = load_config(overrides=["model.lora.enabled=true", "rollout.lora_sync=adapter"])
    assert ok.rollout.lora_sync == "adapter"
    for overrides, texts in [
        (["rollout.lora_sync=adapter"], ["rollout.lora_sync", "model.lora.enabled=true"]),
        (
            ["model.lora.enabled=true", "rollout.lora_sync=adapter", "rollout.backend=hf"],
            ["rollout.lora_sync", "rollout.backend=vllm, not hf"],
        ),
        (
            ["model.lora.enabled=true", "rollout.lora_sync=adapter", "model.lora.r=600"],
            ["model.lora.r", "<= 512 with rollout.lora_sync=adapter"],
        ),
        (["rollout.lora_sync=delta"], ["rollout.lora_sync", "merged, adapter"]),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(overrides=overrides)
        assert all(t in str(info.value) for t in texts), (overrides, str(info.value))


@pytest.fixture(scope="module")
def peft_model():
    """The built-in model with r = 4 adapters on q and v, trained a little (lora_B nonzero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ray_s3ft.model.paths import resolve_model_path

    path = resolve_model_path("builtin")
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return path, model.eval()


def test_the_adapter_sent_is_peft_s_own_names_shapes_and_config(peft_model):
    _, model = peft_model
    tensors, config = adapter_state(model, torch.float32)
    layers = model.config.num_hidden_layers
    hidden = model.config.hidden_size
    kv = model.config.num_key_value_heads * (hidden // model.config.num_attention_heads)
    want = {}
    for i in range(layers):
        for proj, out in (("q_proj", hidden), ("v_proj", kv)):
            stem = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            want[f"{stem}.lora_A.weight"] = (4, hidden)  # [r, in]
            want[f"{stem}.lora_B.weight"] = (out, 4)  # [out, r]
    assert {k: tuple(v.shape) for k, v in tensors.items()} == want
    live = dict(model.named_parameters())
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
    sent = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert torch.equal(sent, live[name]) and sent.data_ptr() != live[name].data_ptr()
    conf = json.loads(config)
    assert (conf["r"], conf["lora_alpha"], conf["peft_type"]) == (4, 8, "LORA")
    assert conf["target_modules"] == ["q_proj", "v_proj"]  # a set in PEFT: sorted list here


def test_an_adapter_dir_loads_in_peft_as_the_model_it_came_from(peft_model):
    """The directory an engine gets, after the object store's packing, is an adapter PEFT
    loads onto the base model to the trained model's logits; a replaced one is removed."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path, model = peft_model
    tensors, config = adapter_state(model, torch.float32)
    dirs = AdapterDirs()
    first, first_dir = dirs.add(unpack(pack(tensors)), config)
    second, second_dir = dirs.add(unpack(pack(tensors)), config)
    assert (first, second) == (1, 2) and Path(second_dir).parent == dirs.root
    dirs.remove(first_dir)
    assert not Path(first_dir).exists() and Path(second_dir).exists()
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, second_dir).eval()
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, loaded(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(path)(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (want - plain).abs().max() > 1e-2  # the adapter changes the model
    root = dirs.root
    del dirs  # the engine's temp dir goes with it
    assert not root.exists()


class Calls:
    def __init__(self, served: int = 0) -> None:
        self.made, self.served = [], served

    def submit(self, fn, *args):
        self.made.append((fn, *args))
        return ["ref"]

    def wait(self, refs) -> None:
        pass

    def call(self, fn):  # RolloutWorker.weights_version
        return [self.served]


@pytest.mark.parametrize(
    ("adapter", "send", "load"),
    [
        (True, LearnerActor.engine_adapter, RolloutWorker.update_adapter),
        (False, LearnerActor.engine_weights, RolloutWorker.update_weights),
    ],
)
def test_a_sync_sends_the_adapter_or_the_merged_weights(adapter, send, load):
    learner, engines = Calls(), Calls()
    # version -1: after a learner restart (Recovery.restart_learner) or between grid cells
    sync = WeightSync(learner, engines, nccl_meta=None, version=-1, adapter=adapter)
    sync.to(3)
    sync.to(3)  # served already: nothing sent
    assert learner.made == [(send,)] and engines.made == [(load, 3, "ref")]


def test_an_engine_restarted_during_an_evaluation_gets_the_adapter_again():
    learner, engines = Calls(), Calls(served=0)  # a restarted engine: the base weights
    sync = WeightSync(learner, engines, nccl_meta=None, version=2, adapter=True)
    runs = []

    def evaluate():
        runs.append(1)
        engines.served = 2 if len(runs) > 1 else 0
        return len(runs)

    assert sync.evaluate(2, evaluate) == 2
    assert learner.made == [(LearnerActor.engine_adapter,)]
    assert engines.made == [(RolloutWorker.update_adapter, 2, "ref")]
