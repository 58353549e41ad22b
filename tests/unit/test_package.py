"""Package hygiene: importing ray_s3ft is cheap, and the console script is wired."""

import subprocess
import sys
from pathlib import Path

HEAVY = ("vllm", "deepspeed", "ray", "torch", "transformers")


def _imported_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


def test_package_import_pulls_no_heavy_framework():
    loaded = _imported_after("import ray_s3ft, ray_s3ft.cli, ray_s3ft.config")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_algorithm_core_imports_nothing_heavier_than_torch():
    loaded = _imported_after(
        "import ray_s3ft.algo.losses, ray_s3ft.algo.grpo, ray_s3ft.algo.targets, ray_s3ft.algo.schedules"
    )
    assert not loaded & {"vllm", "deepspeed", "ray", "transformers"}


def test_console_script_help():
    exe = Path(sys.executable).parent / "ray-s3ft"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("eval", "config", "build-model"):
        assert cmd in out
