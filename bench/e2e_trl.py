"""End to end: GRPO samples/s and tokens/s of ``ray-s3ft train`` against TRL's GRPOTrainer.

Both train the built-in model on the built-in task with the same prompts, in the same order,
the same reward (``ray_s3ft.verifiers.steps.verify_steps``, which TRL's side imports from this
checkout), group size, max new tokens, prompts per step, steps, learning rate, KL coefficient and
clip range. TRL runs in a virtual environment of its own (torch and transformers at the versions
of ours), built on first use and reused while its pins stay the same. Only the training steps
are timed (after ``--warmup`` steps), never startup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

TRL = "trl==1.16.0"
VENV = Path(
    os.environ.get("RAY_S3FT_TRL_VENV", Path.home() / ".cache" / "ray-s3ft" / "bench-venv-trl")
)


def trl_venv(path: Path = VENV) -> Path:
    """The Python of a virtual environment with TRL, built when missing or its pins changed."""
    torch = f"torch=={metadata.version('torch').split('+')[0]}"
    pins = [
        torch,
        TRL,
        f"transformers=={metadata.version('transformers')}",  # the same model code as ours
        f"math-verify=={metadata.version('math-verify')}",  # what verify_steps may call
    ]
    python, stamp = path / "bin" / "python", path / "ray-s3ft-pins.txt"
    if python.exists() and stamp.is_file() and stamp.read_text().split() == pins:
        return python
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # torch alone first, then held there: a looser resolve pulls a multi-GB CUDA build
    subprocess.run([*pip, torch], check=True)
    (path / "constraints.txt").write_text(torch + "\n")
    subprocess.run([*pip, "-c", str(path / "constraints.txt"), *pins[1:]], check=True)
    stamp.write_text("\n".join(pins) + "\n")
    return python
