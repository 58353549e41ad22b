"""Checkpoints: ``checkpoints/step_N/`` holds

    hf/                   the policy in Hugging Face format (transformers and vLLM load it as is)
    deepspeed/            every learner rank's engine, optimizer and RNG state, the KL reference
                          (and with learner.optimizer_state=per_mode the other mode's Adam state)
    pending_rollout.json  rollout.async: the prefetched GRPO batch that was in flight
    trainer_state.json    the controller's state (step, weights version, data cursors, schedule,
                          the target store's digest, fault counts), written last

``trainer_state.json`` is written last, atomically (a rename): it marks the checkpoint complete.
A directory without it is an interrupted save and is ignored on resume.
Every learner rank writes under the same path: on a multi-node cluster ``trainer.output_dir``
must be on storage that all nodes share.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ray_s3ft.workers.learner import LearnerActor

_STEP_DIR = re.compile(r"step_(\d+)$")
STATE = "trainer_state.json"
PENDING = "pending_rollout.json"  # rollout.async: the prefetched batch a checkpoint holds


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step}"


def save_checkpoint(
    run_dir: Path, step: int, learners, state: dict, files: dict[str, str] | None = None
) -> Path:
    """Collective over the learner group; returns the checkpoint directory. ``files``: more
    of the controller's state (name -> text), written before ``trainer_state.json``."""
    ckpt = checkpoint_dir(run_dir, step)
    ckpt.mkdir(parents=True, exist_ok=True)
    learners.call(LearnerActor.save, str(ckpt / "deepspeed"), str(ckpt / "hf"))
    for name, text in (files or {}).items():
        (ckpt / name).write_text(text)
    if PENDING not in (files or {}):  # a step saved again, without one now
        (ckpt / PENDING).unlink(missing_ok=True)
    tmp = ckpt / f"{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, ckpt / STATE)
    return ckpt


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = []
    for d in (run_dir / "checkpoints").glob("step_*"):
        m = _STEP_DIR.search(d.name)
        if m and (d / STATE).is_file():
            found.append((int(m.group(1)), d))
    return max(found)[1] if found else None
