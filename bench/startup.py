"""Startup: seconds from launching ``ray-s3ft train`` to its first training step, on a warm and
on a fresh environment, beside one bare vLLM engine start (the largest single piece).

fresh: empty vLLM cache, torch-extensions (DeepSpeed's ops) and Hugging Face cache dirs, a new
run directory and Ray temp dir; warm: the same run again on the caches the fresh run left.
The Python environment itself is the same (installing it, ``make setup``, is its own figure in
BENCHMARKS.md). Times come from the console lines as they appear: the first ``startup ...``
line (imports done), each ``<phase> done in`` line, and the ``step 1/`` line (first step done).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, parser, report

PHASE = re.compile(r"ray-s3ft (\w+) done in ([\d.]+) s")


def _env(caches: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private cluster
    return {
        **env,
        "VLLM_CACHE_ROOT": str(caches / "vllm"),
        "TORCH_EXTENSIONS_DIR": str(caches / "torch_extensions"),
        "HF_HOME": str(caches / "hf"),
        "PYTHONUNBUFFERED": "1",
    }


def train_run(overrides: list[str], caches: Path, run_dir: Path) -> dict:
    exe = Path(sys.executable).with_name("ray-s3ft")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ray_s3ft.cli"]
    cmd += ["train", *overrides, f"trainer.output_dir={run_dir}"]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=_env(caches), cwd=run_dir.parent, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip
    lines, imported, first_step, phases = [], None, None, {}
    for line in proc.stdout:
        now = time.perf_counter() - started
        lines.append(line)
        if imported is None and "ray-s3ft startup ..." in line:
            imported = now
        if first_step is None and line.startswith("step 1/"):
            first_step = now
        if m := PHASE.search(line):
            phases[m.group(1)] = float(m.group(2))
    if proc.wait() or first_step is None:
        sys.exit(f"ray-s3ft train failed ({proc.returncode}):\n{''.join(lines)[-4000:]}")
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {
        "to_first_step_s": first_step,
        "imports_s": imported,
        "phases_s": {k: phases[k] for k in ("startup", "eval_before", "targets") if k in phases},
        "first_step_s": json.loads(rows[0])["timing/step"],
        "total_s": time.perf_counter() - started,
    }


def engine_start(caches: Path) -> float:
    """A fresh process that imports vLLM and builds the engine ``RolloutWorker`` builds."""
    code = (
        "from ray_s3ft.config import load_config\n"
        "from ray_s3ft.model.paths import resolve_model_path\n"
        "from ray_s3ft.workers.engines import VLLMEngine\n"
        "VLLMEngine(resolve_model_path('builtin'), load_config().rollout, 512, False, False)\n"
    )
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], env=_env(caches), capture_output=True)
    if r.returncode:
        sys.exit(f"the bare engine failed:\n{r.stderr.decode()[-4000:]}")
    return time.perf_counter() - started


def main(argv=None) -> dict:
    ap = parser("startup", __doc__)
    ap.add_argument(
        "--overrides", default="trainer.max_steps=1 schedule.kind=sft",
        help="space-separated key=value for ray-s3ft train (default: the default run's first "
        "step, an SFT step: SASR needs more steps than its 20 warm-up ones)",
    )  # fmt: skip
    ap.add_argument("--warm-runs", type=int, default=1)
    args = ap.parse_args(argv)
    if args.smoke:
        # the least work before the first step: no S3FT targets to build, no held-out sets
        args.overrides += (
            " data.train_size=16 eval.task_size=8 eval.heldout=[] algorithm.targets=gold"
        )
        args.warm_runs = 0
    overrides = args.overrides.split()
    with tempfile.TemporaryDirectory(prefix="rb-start-") as tmp:
        caches = Path(tmp) / "caches"
        runs = {"fresh": [train_run(overrides, caches, Path(tmp) / "fresh")]}
        for i in range(args.warm_runs):
            runs.setdefault("warm", []).append(train_run(overrides, caches, Path(tmp) / f"w{i}"))
        engine = engine_start(caches)  # warm caches: its best case
    rows = []
    for kind, rs in runs.items():
        r = min(rs, key=lambda x: x["to_first_step_s"])
        rows += [
            Row(f"{kind}: ray-s3ft train to first step vs bare vLLM engine start",
                r["to_first_step_s"], engine, "s"),
            Row(f"{kind}: its startup phase (Ray, actor groups) vs bare vLLM engine start",
                r["phases_s"]["startup"], engine, "s"),
        ]  # fmt: skip
        print(f"{kind}: {r}")
    return report("startup", args, rows, {"runs": runs, "engine_start_s": engine})


if __name__ == "__main__":
    main()
