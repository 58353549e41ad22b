"""``rollout.threads``: how many torch threads a rollout engine gets, resolved where it runs."""

import json
import subprocess
import sys

import pytest

from ray_s3ft.config import load_config
from ray_s3ft.run.cluster import rollout_threads

CASES = [(1, 1), (3, 1), (0, 1), (0, 2)]  # (rollout.threads, engines on the node)
PROBE = """
import json, os, sys
from ray_s3ft.config import load_config
from ray_s3ft.model.paths import resolve_model_path
from ray_s3ft.workers.rollout import RolloutWorker
import torch
cfg = load_config(overrides=["rollout.backend=hf"]).rollout
out = []
for threads, peers in json.loads(sys.argv[1]):  # each engine sets the process's thread count
    RolloutWorker(resolve_model_path("builtin"), cfg, 512, 256, threads=threads, peers=peers)
    out.append([torch.get_num_threads(), len(os.sched_getaffinity(0))])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def engine_threads() -> dict[tuple[int, int], tuple[int, int]]:
    """(threads, peers) -> (the engine's torch threads, the cores it may use), from a process
    of its own (torch's thread count is per process), one engine after another."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(CASES)],
        capture_output=True, text=True, timeout=300, check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {case: tuple(x) for case, x in zip(CASES, got, strict=True)}


@pytest.mark.parametrize(("threads", "peers"), CASES)
def test_an_engine_takes_the_threads_asked_or_its_share_of_the_node(threads, peers, engine_threads):
    got, cores = engine_threads[threads, peers]
    assert got == (threads or max(1, cores // peers))


def test_auto_keeps_the_reserved_cpus_when_rollouts_overlap_training():
    sync = load_config(overrides=["rollout.threads=0"])
    assert rollout_threads(sync) == 0  # resolved on the actor's node
    busy = load_config(overrides=["rollout.threads=0", "rollout.async=true",
                                  "resources.cpus_per_rollout=2"])  # fmt: skip
    assert rollout_threads(busy) == 2
    assert rollout_threads(load_config(overrides=["rollout.threads=3"])) == 3
    assert rollout_threads(load_config()) == 1  # the default: one thread, as before
