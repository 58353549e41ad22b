"""A grid's accuracies question by question: each method's standard error over the questions
and the claims' paired differences (``stats``), from the verdicts every evaluation keeps
beside its scores (``eval_before.items.jsonl``, ``cells/<cell>/eval_after.items.jsonl``).

A question is ``(id, h)``: its id within the set and its prompt's hash. Cells evaluated before
the verdicts were kept have none: their errors are reported as unavailable, not guessed."""

from __future__ import annotations

import json
from pathlib import Path

from ray_s3ft.experiments.methods import CLAIMS, STATIC
from ray_s3ft.experiments.stats import mean_of_independent, paired_difference, seed_mean_se

NO_ITEMS = "n/a (no per-item record)"
ITEMS_BEFORE, ITEMS_AFTER = "eval_before.items.jsonl", "eval_after.items.jsonl"

# {set: {(id, prompt hash): 1.0 correct, 0.0 wrong or undecided}}, one per seed
SeedItems = dict[str, dict[tuple[str, str], float]]


def read_items(path: Path) -> SeedItems | None:
    if not path.is_file():
        return None
    out: SeedItems = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.setdefault(r["set"], {})[(r["id"], r["h"])] = 1.0 if r["correct"] is True else 0.0
    return out


def method_items(out: Path, method: str, seeds: list[int]) -> list[SeedItems] | None:
    """The verdicts of ``method``'s ``seeds`` (the base model: the grid's ``eval_before``);
    None when one of them has none."""
    paths = (
        [out / ITEMS_BEFORE]
        if method == "base"
        else [out / "cells" / f"{method}-s{s}" / ITEMS_AFTER for s in seeds]
    )
    items = [read_items(p) for p in paths]
    return None if not items or any(x is None for x in items) else items


def _matrix(runs: list[SeedItems], name: str, keys: list) -> list[list[float]]:
    return [[run[name][k] for run in runs] for k in keys]  # [Q][S]


def _common(runs: list[SeedItems], name: str) -> list:
    """The questions of set ``name`` that every run answered, in a fixed order."""
    keys = None
    for run in runs:
        got = set(run.get(name, {}))
        keys = got if keys is None else keys & got
    return sorted(keys or ())


def set_errors(runs: list[SeedItems] | None, names: list[str]) -> dict[str, dict]:
    """``{set: seed_mean_se}`` over the questions every seed answered; ``{}`` without items."""
    if runs is None:
        return {}
    return {n: seed_mean_se(_matrix(runs, n, _common(runs, n))) for n in names}


def paired(a: list[SeedItems], b: list[SeedItems], heldout: list[str], seed: int = 0) -> dict:
    """A minus B per set on the questions both answered (``stats.paired_difference``), and on
    the held-out mean (``stats.mean_of_independent``)."""
    out = {}
    for name in ["task", *heldout]:
        keys = _common([*a, *b], name)
        out[name] = paired_difference(_matrix(a, name, keys), _matrix(b, name, keys), seed=seed)
    held = [out[n] for n in heldout]
    return {
        "task": out["task"],
        "heldout": {n: out[n] for n in heldout},
        "heldout_mean": mean_of_independent(held) if held else None,
    }


def claim_pairs(summary: list[dict], extra=()) -> list[tuple[str, str, str]]:
    """``(a, b, label)`` for each claim whose two methods the grid has, SASR against the
    grid's best static schedule by mean task accuracy, then the ``extra`` pairs asked for
    (``compare --pairs``) that are not already there."""
    present = {a["method"]: a for a in summary}
    pairs = [(a, b, f"{a} - {b}") for a, b in CLAIMS if a in present and b in present]
    static = [
        present[m]
        for m in STATIC
        if m in present and present[m]["task_accuracy"]["mean"] is not None
    ]
    if "sasr" in present and static:
        best = max(static, key=lambda a: a["task_accuracy"]["mean"])["method"]
        pairs = [p for p in pairs if p[:2] != ("sasr", best)]
        pairs.append(("sasr", best, f"sasr - best static ({best})"))
    for a, b in extra:
        if a in present and b in present and (a, b) not in {p[:2] for p in pairs}:
            pairs.append((a, b, f"{a} - {b}"))
    return pairs


def claims(summary: list[dict], items: dict[str, list[SeedItems] | None], extra=()) -> list[dict]:
    """The paired differences of ``claim_pairs``; a pair whose cells keep no verdicts gets
    ``NO_ITEMS`` as its note instead of numbers."""
    rows = []
    for a, b, label in claim_pairs(summary, extra):
        row = {"a": a, "b": b, "claim": label}
        if items.get(a) is None or items.get(b) is None:
            row["note"] = NO_ITEMS
        else:
            heldout = list(next(s for s in summary if s["method"] == a)["heldout"])
            row.update(paired(items[a], items[b], heldout))
        rows.append(row)
    return rows
