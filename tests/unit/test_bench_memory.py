"""bench/memory.py's measuring and fitting, without a model: the peak RSS it resets between
modes, the cell's Config, and the least-squares fit of the activation factors."""

import json

import pytest

from bench import memory as bm
from ray_s3ft.run import memory
from ray_s3ft.run.memory import ModelShape

# hidden 8, 2 layers, vocab 10, MLP 16
TINY = {
    "hidden_size": 8, "num_hidden_layers": 2, "vocab_size": 10, "intermediate_size": 16,
    "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": False,
}  # fmt: skip
SHAPE = ModelShape(params=1352, hidden=8, layers=2, vocab=10, intermediate=16)


def test_the_peak_rss_resets_to_what_is_resident_now():
    block = bytearray(256 * 2**20)  # touched: 256 MiB resident
    block[::4096] = b"x" * len(block[::4096])
    now = bm.rss()
    with_block = bm.peak_rss()
    assert with_block >= now >= 256 * 2**20
    del block
    bm.reset_peak()
    assert bm.peak_rss() < with_block - 200 * 2**20  # the block's pages no longer count
    assert bm.peak_rss() >= bm.rss() - 2**20


def test_design_rows_by_hand():
    # 4 tokens, fp32: C_H: 4 x 2 layers x 8 x 4 = 256, C_I: 4 x 2 x 16 x 4 = 512,
    # C_V: 4 x 10 x 4 = 160; checkpointed: one layer's (128, 256), C_G 4 x 2 x 8 x 4 = 256
    assert bm.design_row(SHAPE, 4, False) == [256, 512, 160, 0.0]
    assert bm.design_row(SHAPE, 4, True) == [128, 256, 160, 256]


def test_the_fit_recovers_factors_that_made_the_measurements():
    # C_H 6, C_I 2, C_V 5, C_G 1.5; without checkpointing 256 x 6 + 512 x 2 + 160 x 5 = 3360
    truth = [6.0, 2.0, 5.0, 1.5]
    big = ModelShape(params=0, hidden=32, layers=4, vocab=50, intermediate=40)
    rows = [bm.design_row(s, t, ck) for s in (SHAPE, big) for t in (4, 8) for ck in (False, True)]
    measured = [bm.predict(r, truth) for r in rows]
    assert measured[0] == 3360
    assert bm.fit_factors(rows, measured) == pytest.approx(truth)
    # no checkpointed cell: C_G is not fitted; three shapes determine the other three
    third = ModelShape(params=0, hidden=16, layers=3, vocab=70, intermediate=100)
    plain = [bm.design_row(s, 4, False) for s in (SHAPE, big, third)]
    got = bm.fit_factors(plain, [bm.predict(r, truth) for r in plain])
    assert got[:3] == pytest.approx(truth[:3]) and got[3] == 0.0


def test_the_cell_config_gives_the_estimate_the_cell(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    parts, shape = bm.estimated_parts(str(tmp_path), 3, 20, False, "float32")
    assert (shape.params, shape.layers) == (1352, 2)
    # 3 rows of 20 tokens, and the design row at memory.py's own factors
    factors = [memory.C_H, memory.C_I, memory.C_V, memory.C_G]
    assert parts["activations"] == pytest.approx(
        bm.predict(bm.design_row(shape, 60, False), factors)
    )
    parts, _ = bm.estimated_parts(str(tmp_path), 3, 20, True, "float32")
    assert parts["activations"] == pytest.approx(
        bm.predict(bm.design_row(shape, 60, True), factors)
    )
    assert parts["weights"] == parts["reference"] == 1352 * 4


def test_a_measured_cell_against_the_estimate(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    cell = {"path": str(tmp_path), "micro_batch": 3, "seq_len": 20, "checkpointing": False,
            "dtype": "float32", "rss_setup": 5000.0, "peak_sft": 9000.0, "peak_grpo": 11000.0}  # fmt: skip
    rows, details = bm.compare([cell, {**cell, "checkpointing": True}, {"error": "timed out"}])
    c = details["cells"][0]
    assert c["activations"] == 11000 - 5000  # the larger peak less the RSS after setup
    # the fixed part measured: the RSS after setup less the weights and the reference
    # (1352 x 4 bytes each) and the LoRA adapters' grads and Adam state
    parts = c["estimate"]
    assert parts["weights"] == parts["reference"] == 1352 * 4
    assert c["fixed"] == 5000 - (2 * 1352 * 4 + parts["grads + Adam"])
    assert rows[0].figure * bm.GIB == pytest.approx(parts["activations"])
    assert rows[0].baseline * bm.GIB == 6000
    assert len(rows) == 4 and "fit" in details
