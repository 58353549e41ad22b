"""Where models live: the built-in checkpoint shipped in the package, or a user's path / hub id."""

from __future__ import annotations

from pathlib import Path

BUILTIN = "builtin"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-arith"


def resolve_model_path(path: str) -> str:
    """``"builtin"`` -> the shipped tiny model's directory; anything else is returned as given
    (a local directory, or a Hugging Face id that transformers / vLLM resolve themselves)."""
    if path != BUILTIN:
        return path
    if not (BUILTIN_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the built-in model is missing from {BUILTIN_DIR}; rebuild it with "
            f"`ray-s3ft build-model --out {BUILTIN_DIR}`"
        )
    return str(BUILTIN_DIR)
