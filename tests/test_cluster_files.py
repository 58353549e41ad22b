"""The cluster manifests point at things that exist: a config that validates, the CLI command."""

from pathlib import Path

import yaml

from ray_s3ft.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_rayjob_runs_the_cli_on_a_config_that_validates():
    job = yaml.safe_load((ROOT / "cluster/kuberay/rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    words = job["spec"]["entrypoint"].split()
    assert words[:2] == ["ray-s3ft", "train"]
    config = words[words.index("--config") + 1].removeprefix("/home/ray/ray-s3ft/")
    overrides = [w for w in words if "=" in w]
    cfg = load_config(ROOT / config, overrides)
    # the worker group offers the GPUs the config's roles reserve
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(int(w["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               * w["replicas"] for w in workers)  # fmt: skip
    r = cfg.resources
    need = (r.rollout_workers * r.gpus_per_rollout + r.judge_workers * r.gpus_per_judge
            + r.learner_ranks * r.gpus_per_learner)  # fmt: skip
    assert gpus >= need
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"


def test_dockerfile_installs_the_gpu_extra_on_the_matching_ray_image():
    text = (ROOT / "cluster/Dockerfile").read_text()
    assert "rayproject/ray:2.60.0" in text and "'.[gpu]'" in text
