"""Checkpoints: ``checkpoints/step_N/`` holds

    hf/                   the policy in Hugging Face format (transformers and vLLM load it as is)
    deepspeed/            every learner rank's engine, optimizer and RNG state, the KL reference
                          (and with learner.optimizer_state=per_mode the other mode's Adam state)
    pending_rollout.json  rollout.async: the prefetched GRPO batch that was in flight
    trainer_state.json    the controller's state (step, weights version, data cursors, schedule,
                          the target store's digest, fault counts), written last

A save writes all of it into ``step_N.saving/`` beside, ``trainer_state.json`` last, and then
renames that to ``step_N/``: a ``step_N/`` is always one whole save, also when a step is saved
again (a save that stops half-way leaves the earlier ``step_N/`` as it was; written in place,
the old ``trainer_state.json`` would have marked a mix of two saves complete). A step directory
without ``trainer_state.json`` (an interrupted save of an earlier version) is ignored on resume.
With ``trainer.keep_checkpoints: N`` a complete save then deletes every checkpoint directory of
an earlier step but the newest N - 1 complete ones, and what interrupted saves left of them.
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
_LEFTOVER = re.compile(r"step_(\d+)\.(saving|old)$")  # a save that stopped before its renames
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
    protect: Path | None = None,
) -> Path:
    """Collective over the learner group; returns the checkpoint directory. ``files``: more
    of the controller's state (name -> text), written before ``trainer_state.json``.
    ``keep``: then prune to the newest ``keep`` complete checkpoints (``prune``), never
    deleting ``protect`` (the forgetting budget's best weights)."""
    ckpt = checkpoint_dir(run_dir, step)
    new = ckpt.with_name(f"{ckpt.name}.saving")
    shutil.rmtree(new, ignore_errors=True)  # what an interrupted save of this step left
    new.mkdir(parents=True)
    learners.call(LearnerActor.save, str(new / "deepspeed"), str(new / "hf"))
    for name, text in (files or {}).items():
        (new / name).write_text(text)
    (new / STATE).write_text(json.dumps(state, indent=2) + "\n")
    _rename_over(new, ckpt)
    if keep is not None:
        prune(run_dir, keep, protect)
    return ckpt


def _rename_over(new: Path, ckpt: Path) -> None:
    """Put directory ``new`` in the place of ``ckpt``. A directory cannot be renamed over a
    non-empty one: the old one goes aside first and is deleted after."""
    old = ckpt.with_name(f"{ckpt.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        os.rename(ckpt, old)
    os.rename(new, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _step_dirs(run_dir: Path, pattern: re.Pattern = _STEP_DIR) -> list[tuple[int, Path]]:
    found = []
    for d in (run_dir / "checkpoints").glob("step_*"):
        if m := pattern.search(d.name):
            found.append((int(m.group(1)), d))
    return sorted(found)


def prune(run_dir: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete the checkpoint directories older than the newest ``keep`` complete ones
    (interrupted saves among them too), but ``protect``; returns what was deleted. Newer
    incomplete ones (a save in progress) are left alone."""
    dirs = _step_dirs(run_dir)
    complete = [n for n, d in dirs if (d / STATE).is_file()]
    if len(complete) <= keep:
        return []
    kept = None if protect is None else Path(protect).name
    old = [(n, d) for n, d in dirs + _step_dirs(run_dir, _LEFTOVER) if n < complete[-keep]]
    gone = [d for n, d in old if d.name != kept]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = [(n, d) for n, d in _step_dirs(run_dir) if (d / STATE).is_file()]
    return found[-1][1] if found else None
