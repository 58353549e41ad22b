"""``model.dtype: auto`` and ``rollout.tis: auto`` (config/precision.py): what they resolve to on
devices with and without bf16 units, once, in load_config; explicit bf16 without units warns."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import yaml

from ray_s3ft.config import Config, config_to_yaml, load_config, precision, validate
from ray_s3ft.config.precision import cpu_bf16_units, resolve
from ray_s3ft.run.fingerprint import cell_fingerprint

EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE = "flags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"


def _precision(cfg: Config) -> tuple:
    return cfg.model.dtype, cfg.learner.bf16, cfg.rollout.dtype, cfg.rollout.tis


@pytest.fixture
def cpu(monkeypatch):
    """Set this machine's /proc/cpuinfo as load_config's probe reads it."""

    def use(text: str) -> None:
        monkeypatch.setattr(precision, "cpu_bf16_units", lambda: cpu_bf16_units(text))

    return use


def test_bf16_units_are_read_from_the_cpu_flags():
    assert cpu_bf16_units(EPYC) == ["avx512_bf16"]
    assert cpu_bf16_units(SAPPHIRE) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_units(SKYLAKE) == []  # avx512f alone emulates bf16
    assert cpu_bf16_units("processor\t: 0\n") == []  # no flags line (not x86)


def test_auto_is_the_bf16_profile_where_the_cpu_has_bf16_units(cpu):
    cpu(EPYC)
    cfg = load_config(overrides=["model.dtype=auto"])
    assert _precision(cfg) == ("bfloat16", True, "bfloat16", "always")
    # recorded as resolved: the saved config and the fingerprints see the real dtype
    saved = yaml.safe_load(config_to_yaml(cfg))
    assert (saved["model"]["dtype"], saved["rollout"]["tis"]) == ("bfloat16", "always")
    fp = cell_fingerprint(cfg, {"name": "m"})
    assert (fp["model.dtype"], fp["rollout.dtype"], fp["learner.bf16"]) == (
        "bfloat16",
        "bfloat16",
        True,
    )
    validate(cfg)


def test_auto_is_float32_without_bf16_units(cpu):
    cpu(SKYLAKE)
    cfg = load_config(overrides=["model.dtype=auto"])
    assert _precision(cfg) == ("float32", False, "float32", "stale")
    assert cfg == load_config(overrides=["model.dtype=float32"])


def test_tis_auto_follows_the_numerics_and_an_explicit_rule_stays(cpu):
    cpu(EPYC)
    bf16 = ["model.dtype=bfloat16", "learner.bf16=true", "rollout.dtype=bfloat16"]
    assert load_config(overrides=bf16).rollout.tis == "always"
    assert load_config(overrides=[*bf16, "rollout.tis=stale"]).rollout.tis == "stale"
    # a bf16 learner (fp32 weights) against an fp32 engine: the two still disagree
    assert load_config(overrides=["learner.bf16=true"]).rollout.tis == "always"
    assert load_config(overrides=["rollout.dtype=float16"]).rollout.tis == "always"
    assert load_config().rollout.tis == "stale"
    assert load_config(overrides=["rollout.tis=always"]).rollout.tis == "always"


def _auto(gpus_per_learner: float, gpus_per_rollout: float) -> Config:
    return dataclasses.replace(
        Config(),
        model=dataclasses.replace(Config().model, dtype="auto"),
        resources=dataclasses.replace(
            Config().resources, gpus_per_learner=gpus_per_learner, gpus_per_rollout=gpus_per_rollout
        ),
    )


def test_each_side_follows_its_own_device():
    gpu_has_bf16 = lambda gpu: gpu  # noqa: E731  a bf16 GPU, a CPU without bf16 units
    # a GPU learner, CPU engines: bf16 learns, fp32 samples, and TIS corrects the gap
    assert _precision(resolve(_auto(1, 0), gpu_has_bf16)) == ("bfloat16", True, "float32", "always")
    assert _precision(resolve(_auto(0, 1), gpu_has_bf16)) == (
        "float32",
        False,
        "bfloat16",
        "always",
    )


def test_a_gpu_the_driver_cannot_see_resolves_to_float32_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ray_s3ft"):
        out = resolve(_auto(1, 1), native=lambda gpu: None if gpu else True)
    assert _precision(out) == ("float32", False, "float32", "stale")
    assert "model.dtype: auto resolves to float32" in caplog.text
    assert "rollout.dtype: auto resolves to float32" in caplog.text


def test_explicit_bf16_on_a_cpu_without_units_warns_naming_the_key(cpu, caplog):
    cpu(SKYLAKE)
    flags = ["model.dtype=bfloat16", "learner.bf16=true", "rollout.dtype=bfloat16"]
    with caplog.at_level(logging.WARNING, logger="ray_s3ft"):
        cfg = load_config(overrides=flags)
    assert _precision(cfg) == ("bfloat16", True, "bfloat16", "always")  # kept: right, slow
    for key in ("model.dtype=bfloat16", "learner.bf16=true", "rollout.dtype=bfloat16"):
        assert f"{key}: this CPU has no bf16 units" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ray_s3ft"):
        load_config(overrides=[*flags, "resources.gpus_per_learner=1"])  # on GPUs: no CPU check
    assert "model.dtype=bfloat16:" not in caplog.text and "learner.bf16=true:" not in caplog.text
    assert "rollout.dtype=bfloat16: this CPU" in caplog.text  # the engines stay on the CPU
