"""Smoke runs of the benchmarks in ``bench/`` (BENCHMARKS.md): each runs end to end at tiny
sizes and writes its result with finite, positive figures. No timing is asserted; what is
asserted is that both sides of a comparison did the same work. The step-anatomy benchmark's
smoke run makes the runs of ``test_async_e2e`` and is checked there."""

import math
import os

import pytest
from _e2e import ROOT, bench_smoke, bench_smokes

pytestmark = pytest.mark.slow

# Pairs run side by side: each leaves a core of two idle much of the time, and a pair stays
# within this machine's memory budget of two vLLM engines and two DeepSpeed ranks (rollout:
# one engine, then another; startup: a `ray-s3ft train` run, one engine and two ranks, then a
# bare engine; weight_sync: a rank and an engine; bf16: one rank). The others (e2e_trl: a run
# and TRL; learner: two ranks) run alone.
PAIRS = (("rollout", "startup"), ("weight_sync", "bf16"))


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """name -> its smoke result; a pair runs when the first of its tests asks."""
    done = {}

    def result(name):
        if name not in done:
            (pair,) = [p for p in PAIRS if name in p]
            done.update(bench_smokes(list(pair), tmp_path_factory.mktemp("-".join(pair))))
        if isinstance(done[name], AssertionError):
            raise done[name]
        return done[name]

    return result


def test_rollout(paired):
    result = paired("rollout")
    for size in result["details"].values():
        assert size["same_tokens"]  # actor and direct engine sampled the same tokens
        assert size["actor"]["tokens"] == size["vllm"]["tokens"]
        assert all(t > 0 for t in size["hf"]["tokens"])  # transformers.generate's baseline


def test_learner(tmp_path):
    d = bench_smoke("learner", tmp_path)["details"]
    bare = d["bare"]["1"]["losses"]
    for ours in d["ours"].values():  # the same steps: the same losses
        assert ours["losses"] == pytest.approx(bare, rel=1e-4)
    assert d["bare_with_reference"]["losses"] == pytest.approx(bare, rel=1e-6)


def test_weight_sync(paired):
    d = paired("weight_sync")["details"]["tiny"]
    assert d["copy"]["bytes"] > 0
    # before and after the weights went as numpy views, then through the name map
    for how, loaded_by in (
        ("torch", "vllm_reload"),
        ("numpy", "vllm_reload"),
        ("name_map", "name_map"),
    ):
        s = d[how]
        assert len(s["sync_s"]) == len(s["learner_side_s"]) == len(s["engine_side_s"]) >= 1
        assert s["loaded_by"] == loaded_by, how
    _check_peaks(d["peak_rss"], {"learner", "engine_vllm_reload", "engine_name_map", "driver"})


def test_lora_sync(tmp_path):
    d = bench_smoke("lora_sync", tmp_path)["details"]["builtin"]
    merged, adapter = d["merged"], d["adapter"]
    assert merged["loaded_by"] == "name_map"
    # the adapters alone: lora_A and lora_B of q, k, v, o in each of the 4 layers
    assert adapter["tensors_sent"] == 2 * 4 * 4 < merged["tensors_sent"]
    assert adapter["bytes_sent"] == adapter["copy"]["bytes"] < merged["bytes_sent"]
    # lora_B starts at 0: both engines serve the base model and decode the same tokens
    assert d["same_answers"]
    assert merged["tokens"] == adapter["tokens"] and merged["tokens"][0] > 0
    assert len(d["step_s"]) == 1
    _check_peaks(d["peak_rss"], {"learner", "engine_merged", "engine_adapter", "driver"})


def _check_peaks(peaks: dict, names: set) -> None:
    """Each process's peak resident memory: an interpreter with torch is over 100 MiB."""
    assert set(peaks) == names
    assert len({p["pid"] for p in peaks.values()}) == len(peaks)  # one process each
    for name, p in peaks.items():
        assert 100 < p["peak_rss_mib"] < 24 * 1024, (name, p)
        assert p["rss_mib"] <= p["peak_rss_mib"], (name, p)


def test_e2e_trl(tmp_path):
    # builds TRL's virtual environment on first use (about a minute with pip's cache warm)
    d = bench_smoke("e2e_trl", tmp_path)["details"]
    assert len(d["ours"]["step_s"]) == len(d["trl"]["step_s"]) >= 1
    assert all(t > 0 for t in d["ours"]["tokens"] + d["trl"]["tokens"])


def test_startup(paired):
    run = paired("startup")["details"]["runs"]["fresh"][0]
    assert 0 < run["phases_s"]["startup"] < run["to_first_step_s"] < run["total_s"]


def test_bf16(paired):
    d = paired("bf16")["details"]
    cells = d["cells"]
    assert set(cells) == {"fp32_full", "bf16_full", "fp32_lora", "bf16_lora"}
    # the same first batch, before any update: the same loss, up to bf16 rounding
    first = {name: c["losses"][0] for name, c in cells.items()}
    assert first["fp32_lora"] == pytest.approx(first["fp32_full"], rel=1e-5)  # lora_B = 0
    assert first["bf16_full"] == pytest.approx(first["fp32_full"], rel=2e-2)
    assert first["bf16_lora"] == pytest.approx(first["bf16_full"], rel=1e-3)
    assert cells["fp32_lora"]["trainable_params"] < cells["fp32_full"]["trainable_params"] / 10
    # the roofline: LoRA's step has 4/6 of full fine-tuning's dense FLOPs, the same attention
    full, lora = cells["fp32_full"]["step_flops"], cells["fp32_lora"]["step_flops"]
    assert 4 / 6 < lora / full < 1
    assert d["matmul"]["float32"]["flops_per_s"] > 0 and d["matmul"]["bfloat16"]["flops_per_s"] > 0
    # the decode cells: the same calls in each dtype (2 prompts x 4 samples of up to 16 tokens)
    for cell in d["decode"].values():
        assert len(cell["tokens"]) == 1 and 0 < cell["tokens"][0] <= 2 * 4 * 16
        assert cell["tokens_per_s"] > 0


def test_gpu_check(tmp_path):
    """bench/gpu/check.py's CPU smoke run, with Ray and vLLM made unimportable: the GPU machine
    has neither, and the learner must run in-process there."""
    absent = tmp_path / "absent"
    for name in ("ray", "vllm"):
        (absent / name).mkdir(parents=True)
        (absent / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    path = os.pathsep.join(p for p in (str(absent), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    d = bench_smoke("gpu.check", tmp_path, env=dict(os.environ, PYTHONPATH=path))["details"]
    cells = d["cells"]
    assert set(cells) == {f"smoke/{t}/{c}" for t in ("lora8", "full") for c in ("ckpt", "no-ckpt")}
    for cell in cells.values():
        for mode in ("sft", "grpo"):
            assert cell[mode]["tokens_per_s"] > 0 and cell[mode]["peak_memory_gib"] > 0
            assert all(math.isfinite(x) for x in cell[mode]["losses"])
        # random weights of std 0.02: near-uniform logits over the 512-token vocabulary
        assert cell["sft"]["losses"][0] == pytest.approx(math.log(512), rel=1e-2)
    # LoRA's B starts at 0 and checkpointing only recomputes: the same first SFT loss
    first = [c["sft"]["losses"][0] for c in cells.values()]
    assert first == pytest.approx([first[0]] * 4, rel=1e-5)
    # model FLOPs of a step of 4 x 32 tokens: matmul parameters per token
    # 2 layers x (q 64x64 + k, v 64x32 + o 64x64 + MLP 3 x 64x128) + LM head 64x512 = 106496,
    # attention 12 x 2 layers x 64 x 4 x 32^2 = 6291456; GRPO adds the reference's forward
    full = 6 * 106496 * 128 + 6291456
    assert cells["smoke/full/ckpt"]["sft"]["step_flops"] == full == 88080384
    assert cells["smoke/lora8/ckpt"]["sft"]["step_flops"] == 4 * 106496 * 128 + 6291456
    assert cells["smoke/full/ckpt"]["grpo"]["step_flops"] == full + full / 3
    assert d["decode"]["tokens"] == 4 * 4  # no end token: every prompt decodes its budget
