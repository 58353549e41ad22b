"""Shared by the end-to-end tests that run ``ray-s3ft train`` as a user would."""

import os

# a short GRPO run on the built-in task: small data and eval sets, no in-loop evaluation
SHORT_GRPO = [
    "schedule.kind=grpo",
    "data.train_size=32",
    "eval.task_size=16",
    "eval.heldout_size=8",
    "eval.every=0",
]


def cli_env(tmp) -> dict:
    """The CLI's environment: caches under ``tmp``, a private Ray whatever the shell says."""
    env = dict(os.environ, VLLM_CACHE_ROOT=str(tmp / "vllm-cache"), TMPDIR=str(tmp))
    env.pop("RAY_ADDRESS", None)
    return env
