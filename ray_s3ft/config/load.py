"""Loading a run configuration: schema defaults, then a YAML file, then dotted overrides, merged
as an OmegaConf structured config and validated.

    schema defaults  <-  YAML file  <-  dotted overrides  ->  Config  ->  validate  ->  resolve

Every problem surfaces as a ``ConfigError`` whose message names the full dotted key
(``trainer.max_steps``), where its value came from, and what is allowed; OmegaConf's own
exceptions never escape. ``resolve`` (``precision``) turns ``model.dtype`` and ``rollout.tis``
"auto" into what this machine's devices call for. Make variants with
``load_config(overrides=...)``, or ``dataclasses.replace`` followed by ``validate`` (and
``resolve`` when a variant sets "auto").

This module imports only the standard library, omegaconf, yaml and the standard-library-only
modules the checks need.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from ray_s3ft.config.checks import validate as _check
from ray_s3ft.config.precision import resolve
from ray_s3ft.config.schema import Config, ConfigError, _show


def validate(cfg: Config) -> None:
    """Raise ConfigError listing every invalid value or combination in `cfg`, each by full key
    (the checks: ``ray_s3ft.config.checks``)."""
    _check(cfg)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Schema defaults, then the YAML file at `path`, then `overrides` ("key=value"), validated."""
    raw: dict = {}  # file and overrides combined, later sources winning
    origin: dict[str, str] = {}  # dotted key -> where its value came from, for error messages
    if path is not None:
        _combine(raw, origin, _read_yaml(Path(path)), f"in {path}")
    for item in overrides:
        _combine(raw, origin, _parse_override(item), f"in override {item!r}")
    try:
        # one OmegaConf merge for all sources: each costs milliseconds
        cfg = OmegaConf.to_object(OmegaConf.merge(_schema(), raw))  # resolves ${...} too
    except OmegaConfBaseException as e:
        raise ConfigError(_from_omegaconf(e, origin)) from None
    validate(cfg)
    return resolve(cfg)  # model.dtype / rollout.tis "auto": once, here in the driver


# keys an earlier version had -> where they are now: named in the error, not "unknown key"
MOVED = {
    "trainer.lr": "learner.lr",
    "trainer.grpo_lr": "learner.grpo_lr",
    "trainer.weight_decay": "learner.weight_decay",
}

# YAML keys that are Python keywords -> their field names
_ALIASES = {("rollout", "async"): "async_"}


def _unalias(raw: dict, to_field: bool = True) -> dict:
    for (section, key), name in _ALIASES.items():
        old, new = (key, name) if to_field else (name, key)
        part = raw.get(section)
        if isinstance(part, dict) and old in part:
            raw[section] = {(new if k == old else k): v for k, v in part.items()}
    return raw


def config_to_yaml(cfg: Config) -> str:
    """Every field of `cfg` as YAML; `load_config` of it gives back an equal Config."""
    return yaml.safe_dump(_unalias(dataclasses.asdict(cfg), to_field=False), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config (a run directory's config.yaml); atomic, parents created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_to_yaml(cfg))
    os.replace(tmp, path)


@functools.cache
def _schema():
    # read-only (the dataclasses are frozen), so the cached copy cannot be changed by accident;
    # OmegaConf.merge returns a new config
    return OmegaConf.structured(Config)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found (or not a file)")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path}: invalid YAML{where}: {problem}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"config file {path}: {_first_line(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {path}: the top level must be a mapping of sections "
            f"({', '.join(_field_types(Config))}), got {type(raw).__name__}"
        )
    return raw


_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _parse_override(item: str) -> dict:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise ConfigError(
            f"override {item!r}: expected key=value with a dotted key, e.g. trainer.max_steps=5"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(
            f"{key}: value {text!r} is not valid YAML (in override {item!r})"
        ) from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _combine(raw: dict, origin: dict[str, str], new: dict, source: str) -> None:
    """Check `new` against the schema, then merge it into `raw` (mappings merge, others replace)."""
    new = _unalias(new)
    problems = _shape_problems(new, Config, "")
    if problems:
        raise ConfigError([f"{p} ({source})" for p in problems])

    def merge(dst: dict, src: dict, prefix: str) -> None:
        for name, value in src.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict) and isinstance(dst.get(name), dict):
                merge(dst[name], value, f"{key}.")
            else:
                dst[name] = value
                origin[key] = source

    merge(raw, new, "")


def _shape_problems(raw: dict, cls: type, prefix: str) -> list[str]:
    """Unknown keys and section/list/scalar mismatches, each named by its full dotted key.

    OmegaConf reports these too, but not always with the key (a scalar merged into a section
    raises without one, and list items go unchecked), so they are caught here first.
    """
    types = _field_types(cls)
    problems = []
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if key in MOVED:
            problems.append(f"{key}: moved to {MOVED[key]}")
            continue
        if name not in types:
            close = difflib.get_close_matches(str(name), types, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = prefix.rstrip(".") or "the top level"
            problems.append(f"{key}: unknown key; valid keys of {where}: {', '.join(types)}{hint}")
            continue
        tp = types[name]
        if _is_interpolation(value):
            continue
        if dataclasses.is_dataclass(tp):
            if isinstance(value, dict):
                problems += _shape_problems(value, tp, f"{key}.")
            else:
                problems.append(f"{key}: expected {_type_text(tp)}, got {_show(value)}")
        elif typing.get_origin(tp) is list:
            if not isinstance(value, list) or any(isinstance(v, (dict, list)) for v in value):
                problems.append(f"{key}: expected {_type_text(tp)}, got {_show(value)}")
        elif isinstance(value, (dict, list)) or (tp is bool and not isinstance(value, bool)):
            # OmegaConf would read 1 or "on" as true; a bool field takes true/false only.
            problems.append(f"{key}: expected {_type_text(tp)}, got {_show(value)}")
    return problems


def _from_omegaconf(e: OmegaConfBaseException, origin: dict[str, str]) -> str:
    key = getattr(e, "full_key", None) or ""
    parts = key.split(".")  # the value came from the source that last set the key or a parent
    source = next(
        (origin[p] for i in range(len(parts), 0, -1) if (p := ".".join(parts[:i])) in origin), ""
    )
    suffix = f" ({source})" if source else ""
    tp = _schema_type(key)
    if type(e) is ValidationError and tp is not None:  # a value of the wrong type
        return f"{key}: expected {_type_text(tp)}, got {_show(getattr(e, 'value', None))}{suffix}"
    return f"{key or 'config'}: {_first_line(e)}{suffix}"


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _schema_type(key: str):
    """The declared type of a dotted key ("eval.heldout[0]" -> list[str]), or None if unknown."""
    tp: Any = Config
    for part in re.sub(r"\[\d+\]", "", key).split(".") if key else []:
        if not dataclasses.is_dataclass(tp) or part not in _field_types(tp):
            return None
        tp = _field_types(tp)[part]
    return tp


def _type_text(tp) -> str:
    if dataclasses.is_dataclass(tp):
        return f"a section with keys {', '.join(_field_types(tp))}"
    if typing.get_origin(tp) is list:
        return "a list of strings, e.g. [a, b]"
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[X]
        return f"{_type_text(args[0])} or null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


def _first_line(e: Exception) -> str:
    text = getattr(e, "msg", None) or str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _is_interpolation(value) -> bool:
    return isinstance(value, str) and value.strip().startswith("${")
