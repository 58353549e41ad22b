"""The name map from HF tensors to vLLM's fused parameters (``workers.vllm_weights.plan``),
on a one-layer Llama's names and shapes written out by hand."""

from ray_s3ft.workers.vllm_weights import Target, plan

PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
L = "model.layers.0"
# hidden 8, 2 heads of 4 (q 8 rows), 1 kv head (k, v 4 rows each), ffn 6, vocabulary 10
HF = {
    "model.embed_tokens.weight": (10, 8),
    f"{L}.self_attn.q_proj.weight": (8, 8),
    f"{L}.self_attn.k_proj.weight": (4, 8),
    f"{L}.self_attn.v_proj.weight": (4, 8),
    f"{L}.self_attn.o_proj.weight": (8, 8),
    f"{L}.mlp.gate_proj.weight": (6, 8),
    f"{L}.mlp.up_proj.weight": (6, 8),
    f"{L}.mlp.down_proj.weight": (8, 6),
    f"{L}.input_layernorm.weight": (8,),
    "model.norm.weight": (8,),
    "lm_head.weight": (10, 8),
}
VLLM = {
    "model.embed_tokens.weight": (64, 8),  # vLLM pads the vocabulary to 64 rows
    f"{L}.self_attn.qkv_proj.weight": (16, 8),
    f"{L}.self_attn.o_proj.weight": (8, 8),
    f"{L}.mlp.gate_up_proj.weight": (12, 8),
    f"{L}.mlp.down_proj.weight": (8, 6),
    f"{L}.input_layernorm.weight": (8,),
    "model.norm.weight": (8,),
}
VOCAB = {"model.embed_tokens.weight", "lm_head.weight"}  # vLLM pads their rows


def test_fused_rows_follow_the_packed_order_and_a_tied_head_is_skipped():
    targets = {f"{t.module}.{t.param}": t for t in plan(HF, VLLM, PACKED, tied=True, padded=VOCAB)}
    assert set(targets) == set(VLLM)
    qkv = targets[f"{L}.self_attn.qkv_proj.weight"]
    assert qkv == Target(
        f"{L}.self_attn.qkv_proj",
        "weight",
        (
            (f"{L}.self_attn.q_proj.weight", 0, 8),
            (f"{L}.self_attn.k_proj.weight", 8, 4),
            (f"{L}.self_attn.v_proj.weight", 12, 4),
        ),
    )
    assert qkv.rows == 16
    gate_up = targets[f"{L}.mlp.gate_up_proj.weight"]
    assert gate_up.parts == ((f"{L}.mlp.gate_proj.weight", 0, 6), (f"{L}.mlp.up_proj.weight", 6, 6))
    # the embedding's 10 rows go into the first 10 of vLLM's 64
    assert targets["model.embed_tokens.weight"].parts == (("model.embed_tokens.weight", 0, 10),)


def test_an_untied_head_is_a_parameter_of_its_own():
    vllm = {**VLLM, "lm_head.weight": (64, 8)}
    targets = {f"{t.module}.{t.param}" for t in plan(HF, vllm, PACKED, tied=False, padded=VOCAB)}
    assert "lm_head.weight" in targets
    assert (
        plan(HF, VLLM, PACKED, tied=False, padded=VOCAB) == "no vLLM parameter for lm_head.weight"
    )


def test_what_cannot_be_placed_is_named():
    no_v = {k: v for k, v in HF.items() if "v_proj" not in k}
    assert (
        plan(no_v, VLLM, PACKED, True, VOCAB)
        == f"{L}.self_attn.qkv_proj.weight: no v_proj in the weights"
    )
    no_norm = {k: v for k, v in HF.items() if k != "model.norm.weight"}
    assert plan(no_norm, VLLM, PACKED, True, VOCAB) == "nothing sent for model.norm.weight"
    wide = {**HF, f"{L}.mlp.down_proj.weight": (8, 7)}
    assert (
        plan(wide, VLLM, PACKED, True, VOCAB)
        == f"{L}.mlp.down_proj.weight: (8, 7) sent, vLLM holds (8, 6)"
    )
    tall = {**HF, f"{L}.self_attn.k_proj.weight": (8, 8)}
    assert (
        plan(tall, VLLM, PACKED, True, VOCAB)
        == f"{L}.self_attn.qkv_proj.weight: (20, 8) sent, vLLM holds (16, 8)"
    )
    assert (
        plan({**HF, "extra.weight": (1,)}, VLLM, PACKED, True, VOCAB)
        == "no vLLM parameter for extra.weight"
    )


def test_fewer_rows_than_vllm_holds_only_for_the_padded_vocabulary():
    short = {**HF, f"{L}.mlp.down_proj.weight": (7, 6)}  # a row of the layer would stay stale
    assert (
        plan(short, VLLM, PACKED, True, VOCAB)
        == f"{L}.mlp.down_proj.weight: (7, 6) sent, vLLM holds (8, 6)"
    )
    short_k = {**HF, f"{L}.self_attn.k_proj.weight": (2, 8)}  # 8 + 2 + 4 of qkv's 16 rows
    assert (
        plan(short_k, VLLM, PACKED, True, VOCAB)
        == f"{L}.self_attn.qkv_proj.weight: (14, 8) sent, vLLM holds (16, 8)"
    )
    # the embedding's 10 rows into vLLM's 64 only as a vocabulary vLLM pads
    assert (
        plan(HF, VLLM, PACKED, True, padded=())
        == "model.embed_tokens.weight: (10, 8) sent, vLLM holds (64, 8)"
    )
