"""What made a cached artefact, kept beside it and checked before it is reused.

A run and a grid reuse what they already made: the base model's evaluation
(``eval_before.json``, fingerprint in ``eval_before.fingerprint.json``), the S3FT target store
(``targets.meta.json``) and each ``compare`` cell (``cells/<cell>/fingerprint.json``). A
fingerprint is the config keys that decide the artefact, flattened to dotted names, and the
model's identity (``model_identity``). Reusing an artefact whose fingerprint differs from the
current one is a ``ConfigError`` naming the artefact and every key that differs, with both
values; ``--force`` redoes the artefact instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ray_s3ft.config import Config, ConfigError

# weight files up to this size are hashed whole; a larger one by its size and its first and
# last MiB (a 14 GB checkpoint is not read on every start; a retrained one differs there)
_WHOLE_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


def model_identity(name: str, path: str) -> dict:
    """``name`` (``model.path`` as written) and a digest of what is at ``path`` (the resolved
    directory): its ``fetch.json`` if ``ray-s3ft fetch-model`` made it (the fetched files'
    hashes), else its ``config.json`` and weight files. A hub id (no such directory): the id."""
    root = Path(path)
    if not root.is_dir():
        return {"name": name, "digest": None}
    h = hashlib.sha256()
    fetched = root / "fetch.json"
    files = [fetched] if fetched.is_file() else [root / "config.json"]
    if not fetched.is_file():
        files += sorted({p for pat in _WEIGHTS for p in root.glob(pat)})
    for f in files:
        if not f.is_file():
            continue
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= _WHOLE_BYTES:
                h.update(fh.read())
            else:
                h.update(fh.read(_EDGE_BYTES))
                fh.seek(size - _EDGE_BYTES)
                h.update(fh.read(_EDGE_BYTES))
    return {"name": name, "digest": h.hexdigest()[:16]}


def flatten(obj, prefix: str = "") -> dict:
    """Nested dicts -> ``{"a.b": value}``; lists and scalars are values."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict = {}
    for k, v in obj.items():
        out.update(flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


def _keys(cfg: Config, sections: dict[str, tuple[str, ...] | None]) -> dict:
    """``sections``: section -> the keys left out of it (None: the whole section)."""
    flat = flatten(dataclasses.asdict(cfg))
    out = {}
    for key, value in flat.items():
        section, _, rest = key.partition(".")
        if section in sections and not rest.startswith(tuple(sections[section] or ())):
            out[key] = value
    return out


# The keys that decide the base model's evaluation: the eval sets (data, eval), how answers
# are read and judged (judge) and the engine that answers (model, rollout.backend / dtype).
_EVAL_SECTIONS = {
    "model": ("path", "lora"),  # the path is in the model's identity; adapters start at zero
    "data": ("train_path", "train_size", "max_response_tokens", "paraphrase_template"),
    "eval": ("every", "every_size", "output_dir", "batch_size", "backend", "lm_eval"),
    "judge": ("batch_size", "paraphrase_keeps_working"),
}


def eval_fingerprint(cfg: Config, model: dict) -> dict:
    """``eval_before.json``'s fingerprint: ``model`` (``model_identity``) and its keys."""
    fp = _keys(cfg, _EVAL_SECTIONS)
    fp.update({"rollout.backend": cfg.rollout.backend, "rollout.dtype": cfg.rollout.dtype})
    return {**fp, "model": model}


# where a cell's output goes, what watches it and how long it waits for nodes or keeps old
# checkpoints do not change what it computes
_NOT_CELL = (
    "trainer.output_dir", "trainer.loggers", "trainer.mlflow.", "trainer.wandb.",
    "trainer.resume", "trainer.node_wait_s", "trainer.max_learner_restarts",
    "trainer.keep_checkpoints", "resources.wait_for_resources_s", "resources.memory_check",
)  # fmt: skip


def cell_fingerprint(cfg: Config, model: dict) -> dict:
    """A ``compare`` cell's fingerprint: its whole resolved config (but ``_NOT_CELL``) and
    ``model`` (``model_identity``)."""
    flat = flatten(dataclasses.asdict(cfg))
    return {**{k: v for k, v in flat.items() if not k.startswith(_NOT_CELL)}, "model": model}


def differences(saved: dict, now: dict) -> list[str]:
    """``"key: saved -> now"`` for every dotted key whose value differs (``(absent)`` for a
    key one side lacks)."""
    a, b = flatten(saved), flatten(now)
    missing = "(absent)"
    return [
        f"{k}: {json.dumps(a.get(k, missing))} -> {json.dumps(b.get(k, missing))}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k, missing) != b.get(k, missing)
    ]


def _added_at_default(saved: dict, now: dict) -> dict:
    """``now`` without the keys ``saved`` lacks whose value is the built-in default: a
    setting added to the config after the artefact was made, left at its default, is the
    behaviour of the code before it existed (new settings default to it), so it changed
    nothing the artefact computed."""
    defaults = flatten(json.loads(json.dumps(dataclasses.asdict(Config()))))
    old = flatten(saved)
    missing = object()
    return {k: v for k, v in flatten(now).items() if k in old or defaults.get(k, missing) != v}


def check_reuse(artefact: Path, saved: dict | None, now: dict, force: bool) -> bool:
    """True: ``artefact`` was made by ``now`` and may be reused (a key added to the config
    since, at its default, does not count: ``_added_at_default``). False: it was not, and
    ``force`` says to redo it. Otherwise a ConfigError naming the keys that differ."""
    if saved == now:
        return True
    if saved is not None:
        now = _added_at_default(saved, json.loads(json.dumps(now)))
        if flatten(json.loads(json.dumps(saved))) == now:
            return True
    if force:
        return False
    if saved is None:
        why = (
            "it has no fingerprint (made before fingerprints were kept), so what made it is unknown"
        )
    else:
        why = "it was made with other settings (saved -> now): " + "; ".join(
            differences(saved, now)
        )
    raise ConfigError(
        f"{artefact}: {why}. Rerun with --force to redo it, or use another output directory."
    )


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def save(path: Path, fingerprint: dict) -> None:
    path.write_text(json.dumps(fingerprint, indent=2) + "\n")
