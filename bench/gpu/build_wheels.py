"""Build here, with network, the wheels the air-gapped GPU machine lacks: ``bench/gpu/wheels/``.

That machine has torch (CUDA), transformers, peft and accelerate, no package index, and takes
at most 64 MiB of files in all (the working tree and what is carried with it). vLLM and Ray do
not fit and are not needed: ``bench/gpu/check.py`` runs the learner in-process. What the
learner's path needs beyond the machine's packages: DeepSpeed (a py3-none-any wheel built with
``DS_BUILD_OPS=0``: its C++/CUDA ops stay sources, none is used with torch's AdamW) and its
small dependencies, and OmegaConf (``ray_s3ft.config``; 2.4 vendors its ANTLR runtime). The
versions are this environment's, so the GPU runs what CI tests. Compiled dependencies come for
each CPython in ``PYTHONS`` (the machine's is not known in advance). The project itself travels
as the working tree (``PYTHONPATH=.``). ``bench/gpu/run.sh`` installs them there.

    python -m bench.gpu.build_wheels      # then: the run command in bench/gpu/README.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "bench" / "gpu" / "wheels"
LIMIT = 64 * 2**20  # what the device tool carries, working tree included
PURE = ["hjson", "py-cpuinfo", "einops", "pydantic", "annotated-types", "typing-inspection",
        "typing-extensions", "omegaconf"]  # fmt: skip
COMPILED = ["pydantic-core", "msgpack", "ninja"]
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_28_x86_64"]


def pinned(dist: str) -> str:
    return f"{dist}=={metadata.version(dist)}"


def pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def build(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # deepspeed ships as a source distribution: build its wheel with no ops compiled
    env = dict(os.environ, DS_BUILD_OPS="0")
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), "deepspeed==0.19.8", env=env)
    pip("download", "--no-deps", "--only-binary=:all:", "-d", str(out),
        *[pinned(d) for d in PURE])  # fmt: skip
    for version in PYTHONS:
        tag = "cp" + version.replace(".", "")
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        pip("download", "--no-deps", "--only-binary=:all:", "--python-version", version,
            "--implementation", "cp", "--abi", tag, "--abi", "abi3", "--abi", "none",
            *platforms, "-d", str(out), *[pinned(d) for d in COMPILED])  # fmt: skip


def carried_files() -> list[Path]:
    """What the device tool copies: tracked and untracked-not-ignored files."""
    r = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    )  # fmt: skip
    return [ROOT / p for p in r.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


def check_size(sizes: dict[str, int], limit: int = LIMIT) -> int:
    """The total of ``sizes`` (name -> bytes); raises naming the largest when over ``limit``."""
    total = sum(sizes.values())
    if total > limit:
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
        listed = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in largest)
        raise ValueError(
            f"{total / 2**20:.1f} MiB to carry, over the {limit / 2**20:.0f} MiB limit "
            f"(largest: {listed})"
        )
    return total


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.build_wheels", description=__doc__)
    ap.add_argument("--out", type=Path, default=WHEELS)
    ap.add_argument("--check-only", action="store_true", help="only sum what would be carried")
    args = ap.parse_args(argv)
    if not args.check_only:
        build(args.out)
    files = [*carried_files(), *sorted(args.out.glob("*.whl"))]
    sizes = {str(p.relative_to(ROOT)): p.stat().st_size for p in files}
    wheels = sum(s for n, s in sizes.items() if n.endswith(".whl"))
    total = check_size(sizes)
    for name in sorted(n for n in sizes if n.endswith(".whl")):
        print(f"{sizes[name] / 2**20:6.2f} MiB  {name}")
    print(f"wheels {wheels / 2**20:.1f} MiB, with the working tree {total / 2**20:.1f} MiB "
          f"of {LIMIT / 2**20:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
