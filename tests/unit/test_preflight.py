"""Preflight: a missing model, an unwritable output directory, an unreachable RAY_ADDRESS and a
cluster too small for the run each fail within seconds with one message naming the key."""

import socket
import time

import pytest

from ray_s3ft.config import load_config
from ray_s3ft.run import preflight
from ray_s3ft.run.preflight import (
    PreflightError,
    check_before_ray,
    check_cluster_resources,
    check_model_path,
    check_ray_address,
    check_writable_dir,
)


def _error(fn, *args, **kw) -> str:
    with pytest.raises(PreflightError) as info:
        fn(*args, **kw)
    return str(info.value)


# ---------------------------------------------------------------------------- model paths


def test_model_paths(tmp_path):
    check_model_path("builtin", "model.path")
    check_model_path("Qwen/Qwen2.5-0.5B-Instruct", "model.path")  # a hub id: not checked here
    missing = str(tmp_path / "no-model")
    assert _error(check_model_path, missing, "model.path") == (
        f"model.path={missing}: no such directory (a local path; a hub id has the form org/name)"
    )
    assert "model.path=./nowhere: no such" in _error(check_model_path, "./nowhere", "model.path")
    ckpt = tmp_path / "step_10"
    (ckpt / "hf").mkdir(parents=True)
    (ckpt / "hf" / "config.json").write_text("{}")
    assert _error(check_model_path, str(ckpt), "judge.llm_model") == (
        f"judge.llm_model={ckpt}: not a model directory (no config.json); a checkpoint's "
        f"model is its hf/ directory: judge.llm_model={ckpt / 'hf'}"
    )
    check_model_path(str(ckpt / "hf"), "model.path")


def test_missing_builtin_model_is_named(monkeypatch, tmp_path):
    from ray_s3ft.model import paths

    monkeypatch.setattr(paths, "BUILTIN_DIR", tmp_path / "gone")
    assert _error(check_model_path, "builtin", "model.path").startswith(
        f"model.path=builtin: the built-in model is missing from {tmp_path / 'gone'}"
    )


# ----------------------------------------------------------------------- output directory


def test_output_dir_under_a_file_is_not_writable(tmp_path):
    # a path under a regular file fails for root too, where chmod would not stop a write
    (tmp_path / "afile").write_text("x")
    target = str(tmp_path / "afile" / "sub")
    assert _error(check_writable_dir, target, "trainer.output_dir") == (
        f"trainer.output_dir={target}: cannot create the directory: {tmp_path / 'afile'} is a file"
    )
    assert _error(check_writable_dir, str(tmp_path / "afile"), "trainer.output_dir") == (
        f"trainer.output_dir={tmp_path / 'afile'}: cannot create the directory: it is a file"
    )


def test_output_dir_is_created_and_left_clean(tmp_path):
    check_writable_dir(str(tmp_path / "runs" / "x"), "trainer.output_dir")
    assert list((tmp_path / "runs" / "x").iterdir()) == []


def test_os_errors_are_one_message(tmp_path, monkeypatch):
    def refuse(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(preflight.Path, "write_bytes", refuse)
    assert _error(check_writable_dir, str(tmp_path), "trainer.output_dir") == (
        f"trainer.output_dir={tmp_path}: cannot write there: Permission denied"
    )


def test_check_before_ray_lists_every_problem(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "afile").write_text("x")
    cfg = load_config(
        overrides=[f"model.path={tmp_path}/none", f"trainer.output_dir={tmp_path}/afile/run"]
    )
    assert _error(check_before_ray, cfg) == (
        "2 problems:\n"
        f"  - model.path={tmp_path}/none: no such directory (a local path; a hub id has the "
        "form org/name)\n"
        f"  - trainer.output_dir={tmp_path}/afile/run: cannot create the directory: "
        f"{tmp_path / 'afile'} is a file"
    )
    check_before_ray(load_config(overrides=[f"trainer.output_dir={tmp_path}/run"]))


# ---------------------------------------------------------------------------- RAY_ADDRESS


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_unreachable_ray_address_fails_within_seconds(scheme):
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    text = _error(check_ray_address, address)
    assert time.perf_counter() - started < 5
    assert text.startswith(
        f"RAY_ADDRESS={address}: nothing listens at 127.0.0.1:{address.rsplit(':', 1)[1]} "
        "(connection refused); unset RAY_ADDRESS to start a local Ray"
    )


def test_a_listening_address_passes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_ray_address(f"127.0.0.1:{s.getsockname()[1]}")
        check_ray_address(f"ray://127.0.0.1:{s.getsockname()[1]}")
    check_ray_address(None)
    check_ray_address("")
    check_ray_address("local")


def test_a_silent_address_times_out(monkeypatch):
    def hang(address, timeout):
        raise TimeoutError

    monkeypatch.setattr(preflight.socket, "create_connection", hang)
    assert "nothing listens at 10.1.2.3:6379 (no answer within 3 s)" in _error(
        check_ray_address, "10.1.2.3:6379"
    )


def test_dashboard_and_malformed_addresses():
    text = _error(check_ray_address, "http://head:8265")
    assert text.startswith("RAY_ADDRESS=http://head:8265: that is a dashboard (Jobs API) address")
    assert "`ray job submit --address http://head:8265`" in text and "host:6379" in text
    for bad in ("head", "head:port", "grpc://head:6379", "head:0"):
        assert _error(check_ray_address, bad) == (
            f"RAY_ADDRESS={bad}: must be host:port, ray://host:port or auto"
        )


def test_auto_without_a_local_ray(monkeypatch):
    from ray._private import services

    def none_running(address):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address", none_running)
    assert _error(check_ray_address, "auto").startswith("RAY_ADDRESS=auto: no Ray is running")
    port = _closed_port()
    monkeypatch.setattr(services, "canonicalize_bootstrap_address", lambda a: f"127.0.0.1:{port}")
    assert f"nothing listens at 127.0.0.1:{port}" in _error(check_ray_address, "auto")


# -------------------------------------------------------------------------- cluster size


def _node(**resources):
    return {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": resources}


GPU_RUN = [
    "resources.gpus_per_rollout=1",
    "resources.gpus_per_learner=1",
    "resources.learner_ranks=2",
]


def test_the_default_run_fits_four_cpus():
    cfg = load_config()  # 1 rollout x 1 + 2 judges x 0.5 + 2 learners x 1 = 4 CPUs
    check_cluster_resources(cfg, {"CPU": 4.0, "memory": 1e9}, [_node(CPU=4.0, memory=1e9)])
    assert _error(check_cluster_resources, cfg, {"CPU": 3.0}, [_node(CPU=3.0)]) == (
        "resources: the run needs 4 CPU (resources.cpus_per_rollout 1 x "
        "resources.rollout_workers 1 + resources.cpus_per_judge 0.5 x resources.judge_workers 2 "
        "+ resources.cpus_per_learner 1 x resources.learner_ranks 2), the cluster has 3"
    )
    # build-targets starts no learners
    check_cluster_resources(cfg, {"CPU": 2.0}, [_node(CPU=2.0)], learners=False)


def test_gpus_the_cluster_does_not_have():
    cfg = load_config(overrides=GPU_RUN)
    assert _error(check_cluster_resources, cfg, {"CPU": 16.0}, [_node(CPU=16.0)]) == (
        "resources: the run needs 3 GPU (resources.gpus_per_rollout 1 x resources.rollout_workers "
        "1 + resources.gpus_per_learner 1 x resources.learner_ranks 2), the cluster has 0"
    )
    check_cluster_resources(cfg, {"CPU": 16.0, "GPU": 3.0}, [_node(CPU=16.0, GPU=3.0)])


def test_an_actor_that_fits_no_single_node():
    cfg = load_config(overrides=["resources.gpus_per_learner=2", "resources.learner_ranks=1"])
    nodes = [_node(CPU=8.0, GPU=1.0), _node(CPU=8.0, GPU=1.0), {"Alive": False, "Resources": {}}]
    assert _error(check_cluster_resources, cfg, {"CPU": 16.0, "GPU": 2.0}, nodes) == (
        "resources: one learner actor needs {CPU: 1, GPU: 2} on one node "
        "(resources.cpus_per_learner, resources.gpus_per_learner), but no node has that much; "
        "nodes: {CPU: 8, GPU: 1}, {CPU: 8, GPU: 1}"
    )


def test_custom_node_resources_take_one_unit_per_actor():
    cfg = load_config(
        overrides=[
            "resources.rollout_node_resource=gpu_pool",
            "resources.learner_node_resource=gpu_pool",
        ]
    )
    assert _error(
        check_cluster_resources, cfg, {"CPU": 8.0, "gpu_pool": 2.0}, [_node(CPU=8.0)]
    ) == (
        "resources: the run needs 3 of custom resource 'gpu_pool' (1 per actor of "
        "resources.rollout_node_resource x resources.rollout_workers 1 + 1 per actor of "
        "resources.learner_node_resource x resources.learner_ranks 2), the cluster has 2"
    )
    head, workers = _node(CPU=8.0), _node(CPU=8.0, gpu_pool=1000.0)
    check_cluster_resources(cfg, {"CPU": 16.0, "gpu_pool": 1000.0}, [head, workers])
    # the pool exists, but on a node without a CPU to spare for one rollout worker
    assert "one rollout actor needs {CPU: 1, gpu_pool: 1}" in _error(
        check_cluster_resources,
        cfg,
        {"CPU": 16.0, "gpu_pool": 1000.0},
        [_node(CPU=16.0), _node(CPU=0.0, gpu_pool=1000.0)],
    )


def test_check_cluster_reads_the_joined_cluster(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr(ray, "nodes", lambda: [_node(CPU=1.0)])
    assert "the run needs 4 CPU" in _error(preflight.check_cluster, load_config())


def test_importing_preflight_stays_cheap():
    import subprocess
    import sys

    heavy = ("torch", "ray", "vllm", "transformers", "datasets")
    code = f"import sys, ray_s3ft.run.preflight; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _cluster_over_time(monkeypatch, states):
    """ray.cluster_resources / ray.nodes that answer ``states`` in turn (the last one stays)."""
    import ray

    calls = {"n": 0}

    def current():
        return states[min(max(calls["n"] - 1, 0), len(states) - 1)]

    def resources():
        calls["n"] += 1
        total: dict = {}
        for node in current():
            for k, v in node["Resources"].items():
                total[k] = total.get(k, 0.0) + v
        return total

    monkeypatch.setattr(ray, "cluster_resources", resources)
    monkeypatch.setattr(ray, "nodes", lambda: current())
    return calls


def test_the_preflight_waits_for_a_node_that_joins_late(monkeypatch):
    from ray_s3ft.run.preflight import check_cluster

    pinned = ["resources.learner_node_resource=learner_slot", "resources.wait_for_resources_s=30"]
    cfg = load_config(overrides=pinned)
    head = _node(CPU=2.0)
    late = _node(CPU=2.0, learner_slot=2.0)
    calls = _cluster_over_time(monkeypatch, [[head], [head], [head], [head, late]])
    said = []
    check_cluster(cfg, say=said.append, poll_s=0.01)
    assert calls["n"] == 4  # asked again until the learner node was there
    assert said[0].startswith("waiting for the cluster (0 of 30 s): resources: the run needs 4 CPU")
    assert "; resources: the run needs 2 of custom resource 'learner_slot'" in said[0]
    assert len(said) == 2  # one line per SAY_EVERY_S, then the end of the wait
    assert said[-1].startswith("the cluster has what the run needs after")


def test_the_wait_ends_with_the_error_and_how_long_it_waited(monkeypatch):
    from ray_s3ft.run.preflight import check_cluster

    cfg = load_config(overrides=["resources.wait_for_resources_s=0.05"])
    _cluster_over_time(monkeypatch, [[_node(CPU=1.0)]])
    with pytest.raises(PreflightError, match=r"(?s)the cluster has 1\n\(waited 0 s: resources"):
        check_cluster(cfg, poll_s=0.01)
    # no wait (the default): the error at once, as before
    cfg = load_config()
    with pytest.raises(PreflightError, match=r"the cluster has 1$"):
        check_cluster(cfg, poll_s=0.01)
