"""The memory estimate (``run/memory.py``) on hand-counted models, its calibration against the
real profiles, and the preflight that refuses a layout which cannot fit."""

import json
import logging
import struct

import pytest

from ray_s3ft.config import load_config
from ray_s3ft.model.paths import resolve_model_path
from ray_s3ft.run import memory
from ray_s3ft.run.memory import GIB, OVERHEAD, estimate, model_shape, node_need, shape_from_config
from ray_s3ft.run.preflight import PreflightError, check_memory, memory_limits

# hidden 8, 2 layers, vocab 10, MLP 16, 2 heads of 4, 1 KV head (k and v: 4 rows)
TINY = {
    "hidden_size": 8, "num_hidden_layers": 2, "vocab_size": 10, "intermediate_size": 16,
    "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": False,
}  # fmt: skip
SMOLLM2 = {  # HuggingFaceTB/SmolLM2-135M-Instruct
    "hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True,
}  # fmt: skip
QWEN_05B = {  # Qwen2.5-Coder-0.5B-Instruct as fetch-model writes it (embeddings untied)
    "hidden_size": 896, "num_hidden_layers": 24, "vocab_size": 151936, "intermediate_size": 4864,
    "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": False,
}  # fmt: skip
PROFILE = "configs/smollm2-135m-gsm8k.yaml"
NODE = {"node 10.0.0.1": 23.5 * GIB * 0.95}  # this machine: 23.5 GiB, Ray's threshold 0.95


def tiny_cfg(*overrides):
    return load_config(
        overrides=[
            "model.lora.enabled=true", "model.lora.r=2", "model.max_model_len=16",
            "data.max_prompt_tokens=8", "data.max_response_tokens=8", "rollout.max_new_tokens=4",
            "learner.micro_batch_size=2", "learner.zero_stage=2", "resources.learner_ranks=2",
            "eval.max_new_tokens=4",
            *overrides,
        ]
    )  # fmt: skip


def test_parameters_counted_from_the_config():
    # per layer q 8x8 + k 4x8 + v 4x8 + o 8x8 + gate, up 16x8 + down 8x16 = 576, 2 norms 16;
    # embedding and output 10x8 each, final norm 8: 160 + 2 x 592 + 8
    m = shape_from_config(TINY, ("q_proj", "k_proj", "v_proj", "o_proj"), r=2)
    assert m.params == 1352
    assert m.adapted == 2 * (64 + 32 + 32 + 64)
    assert m.lora == 2 * (2 * (8 + 8) + 2 * (4 + 8) * 2 + 2 * (8 + 8))  # 224
    assert shape_from_config({**TINY, "tie_word_embeddings": True}).params == 1352 - 80


def test_parameters_counted_from_safetensors_headers(tmp_path):
    tensors = {"model.layers.0.self_attn.q_proj.weight": [8, 8], "lm_head.weight": [10, 8]}
    header = json.dumps(
        {
            "__metadata__": {},
            **{k: {"dtype": "F32", "shape": s, "data_offsets": [0, 0]} for k, s in tensors.items()},
        }  # fmt: skip
    ).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    m = model_shape(tmp_path, tiny_cfg())
    assert (m.params, m.adapted, m.lora) == (64 + 80, 64, 224)
    # the built-in model: the headers count what loading it gives
    from safetensors.torch import load_file

    builtin = resolve_model_path("builtin")
    loaded = sum(t.numel() for t in load_file(f"{builtin}/model.safetensors").values())
    assert model_shape(builtin, load_config()).params == loaded


def test_each_part_of_a_learner_rank_by_hand():
    cfg, m = tiny_cfg(), shape_from_config(TINY, ("q_proj", "k_proj", "v_proj", "o_proj"), r=2)
    parts = {p.what: p.bytes for p in memory.learner_rank(cfg, m, 0).parts}
    assert parts == {
        "fixed": OVERHEAD["learner"],
        "weights": 1352 * 4,
        "reference": 1352 * 4,
        # ZeRO-2 over 2 ranks, 224 trained: grads 4 x 224 / 2 + the bucket 4 x 224; Adam's
        # moments 8 x 224 and DeepSpeed's fp32 copy 4 x 224, halved
        "grads + Adam": 448 + 896 + (8 * 224 + 4 * 224) / 2,
        # 2 rows x 16 tokens x ((21 x 8 + 3 x 16) x 4 bytes x 2 layers + 7 x 10 x 4 logits)
        # = 32 x (216 x 8 + 280) = 32 x 2008
        "activations": 32 * ((168 + 48) * 4 * 2 + 280),
        "merged LoRA layers": 384 * 4,  # rank 0 at a sync: W + delta W of q, k, v, o
    }
    assert "merged LoRA layers" not in {p.what for p in memory.learner_rank(cfg, m, 1).parts}
    # ZeRO-3: a slice of the weights; at a sync every rank gathers them, rank 0 copies them
    z3 = {
        p.what: p.bytes for p in memory.learner_rank(tiny_cfg("learner.zero_stage=3"), m, 0).parts
    }
    assert z3["weights"] == 1352 * 2 and z3["gathered weights"] == 1352 * 2 + 1352 * 4
    # gradient checkpointing: 11 x hidden per layer kept, and one layer's activations at a
    # time: 32 x (11 x 2 x 8 x 4 + 216 x 4 + 280) = 32 x 1848
    gc = {p.what: p.bytes for p in memory.learner_rank(tiny_cfg("learner.gradient_checkpointing=true"), m, 0).parts}  # fmt: skip
    assert gc["activations"] == 32 * (11 * 2 * 8 * 4 + (168 + 48) * 4 + 280) == 59136


def test_a_node_needs_the_fixed_parts_and_the_larger_phase():
    cfg, m = tiny_cfg(), shape_from_config(TINY, ("q_proj", "k_proj", "v_proj", "o_proj"), r=2)
    procs = estimate(cfg, m)
    names = [p.name for p in procs]
    assert names == ["driver", "Ray", "engine 0", "judge 0", "judge 1", "learner rank 0",
                     "learner rank 1", "object store"]  # fmt: skip
    engine = {p.what: p.bytes for p in procs[2].parts}
    # scoring: fp32 logits of a 4096-token prefill batch over the 10-token vocabulary
    score = 4096 * 10 * 4
    assert engine == {"fixed": OVERHEAD["engine"], "weights": 1352 * 4, "KV cache": GIB,
                      "prompt logprobs": score}  # fmt: skip
    fixed = sum(x.bytes for p in procs for x in p.parts if x.phase == "always")
    train = 2 * 32 * ((168 + 48) * 4 * 2 + 280)  # 128,512 B
    sync = 384 * 4 + 1352 * 4  # rank 0's merged layers, the export in transit
    assert node_need(procs) == pytest.approx(fixed + max(train, sync, score))
    assert score > train  # this tiny model's peak is the engine's scoring
    assert node_need(procs) == pytest.approx(fixed + 163_840)
    # an adapter-only sync (rollout.lora_sync: adapter, where the config has it) sends 224 x 4
    adapter = type("R", (), {"lora_sync": "adapter"})()
    cfg_adapter = type("C", (), {"rollout": adapter, "model": cfg.model})()
    assert memory.sync_bytes(cfg_adapter, m) == 224 * 4
    assert memory.sync_bytes(cfg, m) == 1352 * 4


def test_the_smollm2_profile_fits_and_the_05b_model_in_its_layout_does_not():
    cfg = load_config(PROFILE)
    lora = ("q_proj", "k_proj", "v_proj", "o_proj")
    small = shape_from_config(SMOLLM2, lora, r=8)
    assert small.params == 134_515_008  # the safetensors file's count
    assert memory.fit_problem(cfg, small, NODE) is None
    big = shape_from_config(QWEN_05B, lora, r=8)
    problem = memory.fit_problem(cfg, big, NODE)
    # a rank: fixed 0.8 + weights and reference 2 x 2.35 + LoRA's grads and Adam 0.02 + 2 rows
    # x 640 tokens x ((21 x 896 + 3 x 4864) x 24 layers x 4 B + 7 x 151936 x 4 B)
    # = 1280 x 7,461,376 B = 8.89 GiB: 14.4 GiB. The engine at its peak, scoring: fixed 1.6 +
    # weights 2.35 + KV cache 1 + 4096 x 151936 x 4 B of logits (2.32 GiB) = 7.3 GiB
    assert problem.startswith("memory: the run needs ~35.8 GiB on node 10.0.0.1 (driver 1.0, ")
    assert (
        "engine 7.3, judge 0.4, 2 learner ranks 14.4 each, object store 2.3) of 22.3 GiB" in problem
    )
    assert problem.endswith("set resources.learner_ranks: 1 (~21.4 GiB)")
    # ZeRO-3 alone fits 40 GiB (each rank half the weights); not with SASR's gradient probe,
    # which the config forbids under ZeRO-3
    assert "learner.zero_stage: 3 (~33.4 GiB)" in memory.suggestions(cfg, big, 40 * GIB)
    probe = load_config(PROFILE, ["schedule.sasr.probe_every=2"])
    assert "zero_stage" not in memory.suggestions(probe, big, 40 * GIB)


def test_memory_limits_of_the_nodes():
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "NodeID": "aa" * 8, "Resources": {}},
        {"Alive": True, "NodeManagerAddress": "10.0.0.2", "NodeID": "bb" * 8,
         "Resources": {"memory": 6 * GIB, "object_store_memory": 2 * GIB}},
        {"Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {}},
    ]  # fmt: skip
    limits = memory_limits(nodes, local=("10.0.0.1", 20 * GIB))
    assert limits == {"node 10.0.0.1": 19 * GIB, "node 10.0.0.2": 8 * GIB * 0.95}


def _model_dir(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_the_preflight_refuses_warns_or_stays_quiet(tmp_path, caplog):
    big = _model_dir(tmp_path, QWEN_05B)
    nodes = [{"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {}}]
    local = ("10.0.0.1", 23.5 * GIB)
    with pytest.raises(PreflightError) as e:
        check_memory(load_config(PROFILE), nodes, local=local, model_dir=big)
    assert "needs ~35.8 GiB on node 10.0.0.1" in str(e.value)
    assert str(e.value).endswith("or resources.memory_check: warn to start anyway "
                                 "(docs/real-models.md, Memory)")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        check_memory(load_config(PROFILE, ["resources.memory_check=warn"]), nodes, local=local,
                     model_dir=big)  # fmt: skip
    assert "needs ~35.8 GiB" in caplog.text and "memory_check=warn" in caplog.text
    check_memory(load_config(PROFILE, ["resources.memory_check=skip"]), nodes, local=local,
                 model_dir=big)  # fmt: skip
    # the SmolLM2 profile passes; so does a model not on disk (a hub id)
    (tmp_path / "small").mkdir()
    small = _model_dir(tmp_path / "small", SMOLLM2)
    check_memory(load_config(PROFILE), nodes, local=local, model_dir=small)
    check_memory(load_config(PROFILE), nodes, local=local, model_dir=tmp_path / "absent")


@pytest.mark.parametrize("task", ["gsm8k", "mbpp", "nq"])
def test_the_05b_profiles_fit_this_machine(task):
    cfg = load_config(f"configs/qwen2.5-coder-0.5b-{task}.yaml", ["model.dtype=float32"])
    m = shape_from_config(QWEN_05B, cfg.model.lora.target_modules, r=8)
    assert memory.fit_problem(cfg, m, NODE) is None
    if task != "gsm8k":
        return
    # one row of min(1024, 448 + 512) = 960 tokens, gradient checkpointing: per token
    # 11 x 24 layers x 896 x 4 B (checkpoints) + one layer's (21 x 896 + 3 x 4864) x 4 B
    # + 7 x 151936 x 4 B (logits) = 946,176 + 133,632 + 4,254,208 = 5,334,016 B
    (rank,) = [p for p in estimate(cfg, m) if p.name == "learner rank 0"]
    parts = {p.what: p.bytes for p in rank.parts}
    assert parts["activations"] == 960 * 5_334_016  # 4.77 GiB
    # fixed 0.8 + weights and reference 2 x 2.35 + 4.77 + LoRA's grads and Adam 0.02
    assert rank.need() / GIB == pytest.approx(10.28, abs=0.01)
    # the node in a step: driver 1.0, Ray 0.6, engine 1.6 + 2.35 + 1.0, judge 0.4, the rank
    assert node_need(estimate(cfg, m)) / GIB == pytest.approx(17.2, abs=0.05)
