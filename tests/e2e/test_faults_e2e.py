"""Faults during a real run (``ray-s3ft train`` on a private Ray cluster: vLLM engine, judges,
two DeepSpeed ranks), caused the way they happen: a process killed by its PID.

1. One GRPO run of 12 steps, checkpoints every 4. The rollout engine's process is killed during
   step 2, a judge's during step 5 and learner rank 1's during step 9. Ray restarts the rollout
   and judge actors and retries their calls; the controller replaces the learner group and goes
   back to the step-8 checkpoint. Every step is in ``metrics.jsonl`` exactly once and each
   fault is counted once, in the metrics and in the summary.
2. The same with ``trainer.max_learner_restarts=0``: the run stops with exit status 1 and a
   message that names the latest checkpoint and the command that resumes it; no traceback.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from _e2e import SHORT_GRPO, cli_env

pytestmark = pytest.mark.slow

COMMON = [*SHORT_GRPO, "trainer.checkpoint_every=4"]


def _actor_pids(root: int, role: str) -> list[int]:
    """PIDs of the Ray worker processes of ``role`` under the CLI process ``root``."""
    out = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            if p.cmdline() and p.cmdline()[0].startswith(f"ray::{role}"):
                out.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(out)


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _run_with_kills(tmp: Path, run_dir: Path, kills: list[tuple[int, str, int]], *extra):
    """Run the CLI; when ``metrics.jsonl`` has ``after`` rows, SIGKILL actor ``index`` (by
    PID order) of ``role``. Returns the finished process and what was killed."""
    env = cli_env(tmp)
    args = [sys.executable, "-m", "ray_s3ft.cli", "train", *COMMON, *extra,
            f"trainer.output_dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp
    )
    killed = []

    def chaos():
        for after, role, index in kills:
            while proc.poll() is None and len(_rows(run_dir)) < after:
                time.sleep(0.1)
            pids = _actor_pids(proc.pid, role)
            if proc.poll() is not None or len(pids) <= index:
                return
            os.kill(pids[index], signal.SIGKILL)
            killed.append((len(_rows(run_dir)), role))

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    thread.join(timeout=5)
    return proc.returncode, stdout, stderr, killed


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


def test_killed_rollout_judge_and_learner_are_survived_and_counted(tmp):
    run_dir = tmp / "chaos"
    kills = [(2, "RolloutWorker", 0), (5, "JudgeWorker", 1), (9, "LearnerActor", 1)]
    code, out, err, killed = _run_with_kills(tmp, run_dir, kills, "trainer.max_steps=12")
    assert code == 0, out[-2000:] + err[-4000:]
    assert [role for _, role in killed] == ["RolloutWorker", "JudgeWorker", "LearnerActor"]
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == list(range(12))  # each step once, none lost
    assert [r["weights/version"] for r in rows] == list(range(1, 13))
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = {
        "rollout_restarts": 1, "judge_restarts": 1, "judge_timeouts": 0, "learner_restarts": 1,
        "node_losses": 0,  # processes killed, not nodes: every actor was reported dead
    }  # fmt: skip
    assert summary["faults"] == expected
    assert {k: rows[-1][f"faults/{k}"] for k in expected} == expected
    assert summary["steps"] == {"sft": 0, "grpo": 12}
    assert "restarting the learner group from" in err and "step_8" in err
    assert "faults survived: rollout restarts 1, judge restarts 1, learner restarts 1" in out
    # the actors' own output went to logs/, not to the console
    logs = {p.name for p in (run_dir / "logs").iterdir()}
    assert {"rollout-0.log", "judge-0.log", "judge-1.log", "learner-0.log"} <= logs


def test_a_learner_that_keeps_dying_stops_the_run_with_how_to_resume(tmp):
    run_dir = tmp / "stop"
    code, out, err, killed = _run_with_kills(
        tmp, run_dir, [(5, "LearnerActor", 0)], "trainer.max_steps=40",
        "trainer.max_learner_restarts=0",
    )  # fmt: skip
    assert killed and code == 1, out[-2000:] + err[-4000:]
    assert "Traceback" not in err
    assert "trainer.max_learner_restarts=0" in err
    assert f"Its latest checkpoint is {run_dir / 'checkpoints' / 'step_4'}" in err
    assert f"ray-s3ft train --config {run_dir / 'config.yaml'}" in err
    assert (run_dir / "checkpoints" / "step_4" / "trainer_state.json").is_file()
