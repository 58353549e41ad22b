"""Checkpoints: ``checkpoints/step_N/`` holds

    hf/                   the policy in Hugging Face format (transformers and vLLM load it as is)
    deepspeed/            every learner rank's engine, optimizer and RNG state, the KL reference
                          (and with learner.optimizer_state=per_mode the other mode's Adam state)
    pending_rollout.json  rollout.async: the prefetched GRPO batch that was in flight
    trainer_state.json    the controller's state (step, weights version, data cursors, schedule,
                          the target store's digest, fault counts), written last

``trainer_state.json`` is written last, atomically (a rename): it marks the checkpoint complete.
A directory without it is an interrupted save and is ignored on resume. With
``trainer.keep_checkpoints: N`` a complete save then deletes every checkpoint directory of an
earlier step but the newest N - 1 complete ones.
Every learner rank writes under the same path: on a multi-node cluster ``trainer.output_dir``
must be on storage that all nodes share.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ray_s3ft.workers.learner import LearnerActor

_STEP_DIR = re.compile(r"step_(\d+)$")
STATE = "trainer_state.json"
PENDING = "pending_rollout.json"  # rollout.async: the prefetched batch a checkpoint holds


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    learners,
    state: dict,
    files: dict[str, str] | None = None,
    keep: int | None = None,
) -> Path:
    """Collective over the learner group; returns the checkpoint directory. ``files``: more
    of the controller's state (name -> text), written before ``trainer_state.json``.
    ``keep``: then prune to the newest ``keep`` complete checkpoints (``prune``)."""
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
    if keep is not None:
        prune(run_dir, keep)
    return ckpt


def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for d in (run_dir / "checkpoints").glob("step_*"):
        if m := _STEP_DIR.search(d.name):
            found.append((int(m.group(1)), d))
    return sorted(found)


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete the checkpoint directories older than the newest ``keep`` complete ones
    (interrupted saves among them too); returns what was deleted. Newer incomplete ones (a
    save in progress) are left alone."""
    dirs = _step_dirs(run_dir)
    complete = [n for n, d in dirs if (d / STATE).is_file()]
    if len(complete) <= keep:
        return []
    gone = [d for n, d in dirs if n < complete[-keep]]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = [(n, d) for n, d in _step_dirs(run_dir) if (d / STATE).is_file()]
    return found[-1][1] if found else None
