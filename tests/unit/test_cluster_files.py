"""The cluster files point at things that exist and fit: every KubeRay manifest is valid against
KubeRay's CRD schemas, runs the CLI on a config that validates, and offers what that config's
roles reserve, each role group on the worker group that advertises its slot resource."""

import functools
import gzip
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from ray_s3ft.config import load_config
from ray_s3ft.run.cluster import required_cpus, worker_env

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
CRDS = ROOT / "tests" / "data" / "kuberay-crds"  # KubeRay's published CRDs, gzipped (README there)
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
IMAGE_DIR = "/home/ray/ray-s3ft/"  # WORKDIR of cluster/Dockerfile
ENTRYPOINT_ANNOTATION = "ray-s3ft/entrypoint"  # a RayCluster's documented submit command
PLURALS = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}
SLOTS = ("rollout_slot", "learner_slot")  # what the GPU manifests' worker groups advertise


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


# ------------------------------------------------------------------------ schema validation


def _strict(node):
    """An OpenAPI v3 CRD schema as JSON Schema with the API server's rules: `nullable` allows
    null, and an object with `properties` takes no other keys (kubectl's strict field validation
    rejects unknown fields; the server would otherwise drop them). `x-kubernetes-*` keys and
    formats such as int32 are annotations jsonschema ignores; CEL rules are not checked."""
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    open_ = out.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in out
    if "properties" in out and not open_:
        out["additionalProperties"] = False
    return out


@functools.cache
def _validator(kind: str, api_version: str) -> jsonschema.Draft4Validator:
    group, version = api_version.split("/")
    crd = yaml.load(
        gzip.decompress((CRDS / f"{group}_{PLURALS[kind]}.yaml.gz").read_bytes()),
        Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader),
    )
    assert crd["spec"]["names"]["kind"] == kind
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert entry["served"], f"{api_version} {kind} is not served by this CRD"
    schema = _strict(entry["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def schema_errors(manifest: dict) -> list[str]:
    """Where `manifest` breaks its kind's CRD schema: one 'path: message' per error."""
    kind = manifest.get("kind")
    assert kind in PLURALS, f"not a RayCluster or RayJob: kind {kind!r}"
    errors = _validator(kind, manifest.get("apiVersion", ""))
    return sorted(
        f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in errors.iter_errors(manifest)
    )


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kuberay_crd_schema(path):
    assert schema_errors(_load(path)) == []


@pytest.mark.parametrize(
    "where,value,needle",
    [
        ("spec.rayClusterSpec.workerGroupSpecs.0.replicas", "1", "'1' is not of type 'integer'"),
        ("spec.rayClusterSpec.headGroupSpec.rayStartParams.num-gpus", 0, "not of type 'string'"),
        ("spec.rayClusterSpec.workerGroupSpecs.0.replica", 1, "('replica' was unexpected)"),
        ("spec.shutdownAfterJobFinishes", "yes", "'yes' is not of type 'boolean'"),
    ],
)
def test_the_schema_check_rejects_a_broken_manifest(where, value, needle):
    job = _load(KUBERAY / "rayjob.yaml")
    *parents, last = [int(k) if k.isdigit() else k for k in where.split(".")]
    node = functools.reduce(lambda n, k: n[k], parents, job)
    node[last] = value
    errors = schema_errors(job)
    assert len(errors) == 1 and needle in errors[0], errors


# --------------------------------------------------------------- entrypoint and resources


def _entrypoint(manifest: dict) -> list[str]:
    if manifest["kind"] == "RayJob":
        return manifest["spec"]["entrypoint"].split()
    return manifest["metadata"]["annotations"][ENTRYPOINT_ANNOTATION].split()


def _config(manifest: dict):
    words = _entrypoint(manifest)
    assert words[:2] == ["ray-s3ft", "train"], words
    path = words[words.index("--config") + 1]
    assert path.startswith(IMAGE_DIR), f"--config {path}: not in the image's copy of the repo"
    return load_config(ROOT / path.removeprefix(IMAGE_DIR), [w for w in words if "=" in w])


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def _cpus(quantity) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _custom(text: str) -> dict[str, float]:
    """rayStartParams.resources: KubeRay's quoted JSON string ('"{\\"slot\\": 1}"') or JSON."""
    value = json.loads(text)
    return json.loads(value) if isinstance(value, str) else value


def _groups(manifest: dict) -> list[tuple[str, int, dict[str, float]]]:
    """(group name, pods, what one pod advertises to Ray) for the head and each worker group.
    CPUs and GPUs come from rayStartParams where set, else from the container's limits (what
    KubeRay passes to `ray start`)."""
    spec = _cluster_spec(manifest)
    out = []
    for name, group, pods in [
        ("head", spec["headGroupSpec"], 1),
        *((g["groupName"], g, g["replicas"]) for g in spec.get("workerGroupSpecs", [])),
    ]:
        params = group.get("rayStartParams", {})
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        pod = {
            "CPU": _cpus(params.get("num-cpus", limits["cpu"])),
            "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
            **_custom(params.get("resources", "{}")),
        }
        out.append((name, pods, pod))
    return out


def fit_problems(manifest: dict) -> list[str]:
    """Why the cluster of `manifest` cannot hold the run its entrypoint starts ([] if it can).
    The totals cover all roles. A role pinned by resources.<role>_node_resource must fit, actor
    by actor, on the pods that advertise that resource (one unit, its CPUs and GPUs per actor),
    with room left for the judges, which are not pinned and may be placed on any pod."""
    cfg = _config(manifest)
    r = cfg.resources
    groups = _groups(manifest)
    problems = []

    def total(key):
        return sum(pods * pod.get(key, 0) for _, pods, pod in groups)

    need_gpus = (
        r.rollout_workers * r.gpus_per_rollout
        + r.judge_workers * r.gpus_per_judge
        + r.learner_ranks * r.gpus_per_learner
    )
    if total("CPU") < required_cpus(cfg):
        problems.append(f"{total('CPU')} CPUs for the {required_cpus(cfg)} the roles reserve")
    if total("GPU") < need_gpus:
        problems.append(f"{total('GPU')} GPUs for the {need_gpus} the roles reserve")
    judges = {"CPU": r.judge_workers * r.cpus_per_judge, "GPU": r.judge_workers * r.gpus_per_judge}
    slots = []
    for role, n in (("rollout", r.rollout_workers), ("learner", r.learner_ranks)):
        slot = getattr(r, f"{role}_node_resource")
        per_actor = {"CPU": getattr(r, f"cpus_per_{role}"), "GPU": getattr(r, f"gpus_per_{role}")}
        if slot is None:
            if per_actor["GPU"]:
                problems.append(f"{role}: GPU actors not pinned (resources.{role}_node_resource)")
            continue
        slots.append(slot)
        hosts = [(name, pods, pod) for name, pods, pod in groups if pod.get(slot)]
        if sum(pods * pod[slot] for _, pods, pod in hosts) < n:
            problems.append(f"{role}: fewer than {n} {slot!r} in groups {[h[0] for h in hosts]}")
        for name, _, pod in hosts:
            for key, each in per_actor.items():
                if pod[key] < pod[slot] * each + judges[key]:
                    problems.append(
                        f"{role}: group {name} has {pod[slot]:g} {slot!r} but {pod[key]:g} {key}s "
                        f"for {each:g} each plus {judges[key]:g} for the judges"
                    )
    for name, _, pod in groups:
        if len([s for s in slots if pod.get(s)]) > 1:
            problems.append(f"group {name} advertises the slots of two roles")
    return problems


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_cluster_holds_the_run_its_entrypoint_starts(path):
    assert fit_problems(_load(path)) == []


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_pod_runs_the_image_and_mounts_the_output_dir(path):
    manifest = _load(path)
    spec = _cluster_spec(manifest)
    assert spec["rayVersion"] == "2.60.0"
    out = _config(manifest).trainer.output_dir
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        assert re.fullmatch(r"(.+/)?ray-s3ft:0\.1\.0", container["image"]), container["image"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
        mounts = [m for m in container["volumeMounts"] if claims.get(m["name"]) == "ray-s3ft-runs"]
        assert any(out.startswith(m["mountPath"] + "/") for m in mounts), (path.name, out)


def test_manifests_run_the_cpu_demo_and_both_gpu_configs_on_separate_slot_groups():
    runs = {}
    for path in MANIFESTS:
        manifest = _load(path)
        words = _entrypoint(manifest)
        runs[words[words.index("--config") + 1].removeprefix(IMAGE_DIR)] = manifest
    gpu = [
        "configs/gpu/qwen2.5-0.5b-gsm8k-sasr.yaml",
        "configs/gpu/s3ft-paper-mistral7b-gsm8k.yaml",
    ]
    assert set(runs) == {"configs/default.yaml", *gpu}
    for config in gpu:
        r = _config(runs[config]).resources
        assert (
            r.rollout_node_resource == "rollout_slot" and r.learner_node_resource == "learner_slot"
        )
        hosts = {s: [n for n, _, pod in _groups(runs[config]) if pod.get(s)] for s in SLOTS}
        assert hosts == {"rollout_slot": ["rollout"], "learner_slot": ["learner"]}
    # the image's vLLM is the CUDA build: a cluster without GPUs generates with transformers
    cpu = _config(runs["configs/default.yaml"])
    assert not any(pod["GPU"] for _, _, pod in _groups(runs["configs/default.yaml"]))
    assert cpu.rollout.backend == cpu.eval.backend == "hf" and cpu.judge.verifier != "llm"


def test_fit_check_rejects_a_cluster_too_small_for_its_run():
    job = _load(KUBERAY / "rayjob.yaml")
    learner = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]
    learner["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"
    assert any("2 'learner_slot' but 1 GPUs for 1 each" in p for p in fit_problems(job))
    learner["rayStartParams"] = {}
    assert any("fewer than 2 'learner_slot'" in p for p in fit_problems(job))
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace(
        "resources.learner_node_resource=learner_slot", ""
    )
    assert any("learner: GPU actors not pinned" in p for p in fit_problems(job))


def test_dockerfile_installs_the_gpu_extra_on_the_matching_ray_image():
    text = (ROOT / "cluster/Dockerfile").read_text()
    assert "rayproject/ray:2.60.0" in text and "'.[gpu]'" in text
    assert f"WORKDIR {IMAGE_DIR.rstrip('/')}" in text and "COPY --chown=ray:users configs" in text


def test_runtime_env_file_is_a_runtime_env_that_shares_a_key_with_the_driver():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((ROOT / "cluster/runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # raises on unknown fields or bad values
    # a shared key is what once failed a submitted job (Ray's runtime_env merge conflict);
    # tests/e2e/test_multinode.py submits with this file, so it keeps that case covered
    assert set(worker_env(Path("run"))) & set(env.get("env_vars", {}))
