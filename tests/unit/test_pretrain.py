"""The base-model build script: deterministic from its seed, and its output loads and generates."""

import json

import torch

from ray_s3ft.model.pretrain import pretrain


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_short_build_is_deterministic_and_loadable(tmp_path):
    kw = dict(steps=4, batch_size=4, layers=1, log_every=2, threads=1)
    a = pretrain(tmp_path / "a", seed=1, **kw)
    pretrain(tmp_path / "b", seed=1, **kw)
    c = pretrain(tmp_path / "c", seed=2, **kw)
    wa, wb, wc = (_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert a["final_loss"] != c["final_loss"]
    summary = json.loads((tmp_path / "a" / "pretrain_summary.json").read_text())
    assert summary["steps"] == 4 and summary["parameters"] > 0

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    ids = tok("<|user|>\nHi\n<|assistant|>\n", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3 or tok.eos_token_id in out[0].tolist()
