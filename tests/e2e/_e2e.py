"""Shared by the end-to-end tests that run ``ray-s3ft train`` as a user would, and by those that
run the benchmarks in ``bench/``."""

import json
import math
import os
import sys
from pathlib import Path

from _procs import kill_running, start

ROOT = Path(__file__).resolve().parents[2]

# a short GRPO run on the built-in task: small data and eval sets, no in-loop evaluation
SHORT_GRPO = [
    "schedule.kind=grpo",
    "data.train_size=32",
    "eval.task_size=16",
    "eval.heldout_size=8",
    "eval.every=0",
]


def cli_env(tmp) -> dict:
    """The CLI's environment: temp files under ``tmp``, the session's vLLM cache
    (``conftest.vllm_cache``), a private Ray whatever the shell says."""
    env = dict(os.environ, TMPDIR=str(tmp))
    env.pop("RAY_ADDRESS", None)
    return env


def bench_smokes(names: list[str], tmp: Path, *args: str, env: dict | None = None) -> dict:
    """``python -m bench.<name> --smoke ARGS`` for each name, side by side, run end to end at
    tiny sizes: name -> its JSON result, checked to hold finite, positive figures (or the
    ``AssertionError`` saying why not). No timing is asserted."""
    env = {k: v for k, v in (env or os.environ).items() if k != "RAY_ADDRESS"}  # private Rays
    procs = {}
    try:
        for name in names:
            out = str(tmp / f"{name}.json")
            cmd = [sys.executable, "-m", f"bench.{name}", "--smoke", "--out", out, *args]
            procs[name] = start(cmd, tmp / f"{name}.log", cwd=ROOT, env=env)
        for proc in procs.values():
            proc.wait(timeout=840)
    finally:
        kill_running(procs.values())
    results = {}
    for name, proc in procs.items():
        try:
            results[name] = _checked(name, proc.returncode, tmp)
        except AssertionError as e:  # raised by the test that asks for this one
            results[name] = e
    return results


def _checked(name: str, returncode: int, tmp: Path) -> dict:
    assert returncode == 0, (tmp / f"{name}.log").read_text()[-6000:]
    result = json.loads((tmp / f"{name}.json").read_text())
    assert result["benchmark"] == name
    assert result["machine"]["cpus"] >= 1 and result["machine"]["torch"]
    assert result["rows"]
    for row in result["rows"]:
        for key in ("figure", "baseline", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, row
        assert row["met"] in (True, False, None)
    return result


def bench_smoke(name: str, tmp: Path, *args: str, env: dict | None = None) -> dict:
    """One benchmark's smoke run (``bench_smokes``)."""
    result = bench_smokes([name], tmp, *args, env=env)[name]
    if isinstance(result, AssertionError):
        raise result
    return result


def train_run(tmp: Path, out: Path, overrides: list[str]) -> tuple[list[dict], dict, str]:
    """``ray-s3ft train OVERRIDES trainer.output_dir=OUT`` as a user runs it (in ``tmp``, with
    ``cli_env``): the metrics rows, the summary and the console (stdout and stderr)."""
    import subprocess

    r = subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", "train", *overrides, f"trainer.output_dir={out}"],
        capture_output=True, text=True, env=cli_env(tmp), cwd=tmp, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text()), r.stdout + r.stderr
