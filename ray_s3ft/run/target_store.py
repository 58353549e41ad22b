"""Phase 1 of a run: the S3FT target store (arXiv 2502.08130), built once, offline, as in the paper.

For every training example: the base model answers greedily (y_self) and the judge rules on it;
for the rejected ones the base model paraphrases the gold (y_para) and the judge rules again.
Each record keeps every rung and its verdict, so one store serves ``algorithm.targets`` gold,
ssr and s3ft alike; the chosen target and its source label come from ``select_target``. An sdft
store (arXiv 2402.13669) is built apart: no self answers, a paraphrase of every gold.

The store is ``targets.jsonl`` in the run directory. Work is done in chunks appended to
``targets.partial.jsonl``, so an interrupted build resumes where it stopped; a finished store
whose fingerprint (model, data, budgets) matches is reused, never recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ray_s3ft.algo.targets import (
    Target,
    TargetSource,
    select_target,
    source_fractions,
    too_long_counts,
)
from ray_s3ft.tasks.types import Example
from ray_s3ft.workers.types import Answer, JudgeItem, Verdict

STORE, PARTIAL, META = "targets.jsonl", "targets.partial.jsonl", "targets.meta.json"
# 2: records keep whether each answer ended; a store built before (cut answers could be
# targets) is not reused (its fingerprint differs: --force rebuilds it)
FORMAT = 2


@dataclass(frozen=True)
class TargetRecord:
    id: str
    prompt: str
    gold: str
    self_response: str | None = None  # None when the mode never asks the model (gold, sdft)
    self_ok: bool | None = None
    paraphrase: str | None = None  # None when y_self was accepted or the mode is ssr
    paraphrase_ok: bool | None = None
    self_finished: bool = True  # False: y_self was cut at max_new_tokens (never a target)
    paraphrase_finished: bool = True  # the same for y_para

    def target(self, mode: str, fits: Callable[[str], bool] | None = None) -> Target:
        return select_target(
            mode,
            gold=self.gold,
            self_response=self.self_response,
            self_ok=self.self_ok,
            paraphrase=self.paraphrase,
            paraphrase_ok=self.paraphrase_ok,
            fits=fits,
            self_finished=self.self_finished,
            paraphrase_finished=self.paraphrase_finished,
        )


@dataclass(frozen=True)
class TargetSet:
    records: list[TargetRecord]  # in training-set order
    mode: str
    computed: int  # records built by this call
    reused: int  # records read back from disk
    # whether a self answer / paraphrase fits data.max_response_tokens (None: all fit)
    fits: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)

    def targets(self) -> list[Target]:
        return self._targets

    @cached_property
    def _targets(self) -> list[Target]:  # tokenizes every candidate once (``fits``)
        return [r.target(self.mode, self.fits) for r in self.records]

    def fractions(self) -> dict[str, float]:
        return source_fractions(self.targets())

    def too_long(self) -> dict[str, int]:
        """Accepted self answers / paraphrases not trained on, being over the response budget
        (the next rung was), per rung."""
        return too_long_counts(self.targets())

    def undecided(self) -> dict[str, int]:
        """Verdicts the judge could not decide (no final answer found, a sandbox timeout, an
        unparseable LLM verdict), per rung: each one made that example fall to the next rung."""
        return {
            "self": sum(r.self_response is not None and r.self_ok is None for r in self.records),
            "paraphrase": sum(
                r.paraphrase is not None and r.paraphrase_ok is None for r in self.records
            ),
        }

    def unfinished(self) -> dict[str, int]:
        """Answers cut at the generation budget, per rung (``self``, ``paraphrase``), and
        those of them the judge accepted, refused as targets for being cut (``*_rejected``):
        each made that example fall to the next rung."""
        selfs = [r for r in self.records if r.self_response is not None and not r.self_finished]
        paras = [r for r in self.records if r.paraphrase is not None and not r.paraphrase_finished]
        return {
            "self": len(selfs),
            "self_rejected": sum(r.self_ok is True for r in selfs),
            "paraphrase": len(paras),
            "paraphrase_rejected": sum(r.paraphrase_ok is True for r in paras),
        }

    def digest(self) -> str:
        """What SFT steps train on, hashed: a checkpoint records it, and a resume onto another
        store (rebuilt with another judge, other data) is refused."""
        import hashlib

        h = hashlib.sha256(self.mode.encode())
        for r, t in zip(self.records, self.targets(), strict=True):
            h.update(json.dumps([r.id, r.prompt, t.text, t.source]).encode())
        return h.hexdigest()[:16]


# (prompts, max_new_tokens) -> greedy answers; (pairs, max_new_tokens) -> paraphrases;
# items -> verdicts. The controller passes its actor groups' calls; tests may pass functions.
Greedy = Callable[[Sequence[str], int], list[Answer]]
Paraphrase = Callable[[Sequence[tuple[str, str]], int], list[Answer]]
Judge = Callable[[Sequence[JudgeItem]], list[Verdict]]


def build_targets(
    examples: Sequence[Example],
    run_dir: Path,
    *,
    mode: str,
    fingerprint: dict,
    greedy: Greedy,
    paraphrase: Paraphrase,
    judge: Judge,
    max_new_tokens: int,
    chunk_size: int = 128,
    on_chunk: Callable[[int], None] | None = None,
    keeps_working: Callable[[Example, str], bool] | None = None,
    force: bool = False,
    fits: Callable[[str], bool] | None = None,
) -> TargetSet:
    """Build (or reuse, or finish) the store for ``examples`` under ``mode`` gold|ssr|s3ft|sdft.
    ``keeps_working(example, paraphrase)``: a second rule a paraphrase the judge accepted
    must pass too (``judge.paraphrase_keeps_working``). ``fits(text)``: whether a self answer
    or paraphrase fits the response budget (``TargetSet.fits``). A store (or part of one) that another
    ``fingerprint`` made is a ConfigError naming the keys that differ; ``force``: rebuild it."""
    from ray_s3ft.run.fingerprint import check_reuse, load

    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = {**fingerprint, "mode": mode, "ids": _ids_digest(examples), "format": FORMAT}
    store, partial, meta = run_dir / STORE, run_dir / PARTIAL, run_dir / META
    saved = load(meta)
    if store.exists() or partial.exists():
        check_reuse(store if store.exists() else partial, saved, fingerprint, force)
    if store.exists() and saved == fingerprint:
        return TargetSet(read_store(store), mode, computed=0, reused=len(examples), fits=fits)
    if saved != fingerprint:  # another setting's leftovers (--force): start over
        for path in (store, partial):
            path.unlink(missing_ok=True)
        _write_json(meta, fingerprint)
    done = {r.id: r for r in read_store(partial)} if partial.exists() else {}
    _write_records(partial, list(done.values()))  # drops a line a crash may have cut short
    todo = [ex for ex in examples if ex.id not in done]
    reused = len(examples) - len(todo)
    if on_chunk is not None and reused:
        on_chunk(reused)
    with open(partial, "a") as f:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            for rec in _judge_chunk(
                chunk, mode, greedy, paraphrase, judge, max_new_tokens, keeps_working
            ):
                done[rec.id] = rec
                f.write(json.dumps(dataclasses.asdict(rec)) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a crash loses at most the chunk in flight
            if on_chunk is not None:
                on_chunk(len(chunk))
    records = [done[ex.id] for ex in examples]
    _write_records(store, records)
    partial.unlink(missing_ok=True)
    return TargetSet(records, mode, computed=len(todo), reused=reused, fits=fits)


def _judge_chunk(
    chunk: Sequence[Example],
    mode: str,
    greedy: Greedy,
    paraphrase: Paraphrase,
    judge: Judge,
    max_new_tokens: int,
    keeps_working: Callable[[Example, str], bool] | None = None,
) -> list[TargetRecord]:
    records = [TargetRecord(id=ex.id, prompt=ex.prompt, gold=ex.gold) for ex in chunk]
    if mode in ("ssr", "s3ft"):
        selfs = greedy([ex.prompt for ex in chunk], max_new_tokens)
        verdicts = judge([_item(ex, a.text) for ex, a in zip(chunk, selfs, strict=True)])
        records = [
            dataclasses.replace(
                rec, self_response=a.text, self_ok=v.correct, self_finished=a.finished
            )
            for rec, a, v in zip(records, selfs, verdicts, strict=True)
        ]
    if mode == "s3ft":
        # a cut y_self the judge accepted is rejected too (select_target): it needs the next rung
        todo = [i for i, r in enumerate(records) if r.target("ssr").source != TargetSource.SELF]
    elif mode == "sdft":  # every gold is paraphrased: SDFT has no self rung
        todo = list(range(len(chunk)))
    else:
        return records
    if todo:
        paras = paraphrase([(chunk[i].prompt, chunk[i].gold) for i in todo], max_new_tokens)
        pverdicts = judge([_item(chunk[i], p.text) for i, p in zip(todo, paras, strict=True)])
        for i, p, v in zip(todo, paras, pverdicts, strict=True):
            ok = v.correct
            if ok and keeps_working is not None and not keeps_working(chunk[i], p.text):
                ok = False  # right answer, but not a restatement of the gold's working
            records[i] = dataclasses.replace(
                records[i], paraphrase=p.text, paraphrase_ok=ok, paraphrase_finished=p.finished
            )
    return records


def _item(ex: Example, response: str) -> JudgeItem:
    return JudgeItem(ex.prompt, response, ex.answer, ex.verifier, tuple(ex.tests))


def _ids_digest(examples: Sequence[Example]) -> str:
    import hashlib

    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.id}\0{ex.prompt}\0{ex.gold}\n".encode())
    return h.hexdigest()[:16]


def read_store(path: Path) -> list[TargetRecord]:
    records = []
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    records.append(TargetRecord(**json.loads(line)))
                except (json.JSONDecodeError, TypeError):
                    break  # a line cut by a crash: everything before it is good
    return records


def _write_records(path: Path, records: Sequence[TargetRecord]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for rec in records:
            f.write(json.dumps(dataclasses.asdict(rec)) + "\n")
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


__all__ = ["TargetRecord", "TargetSet", "TargetSource", "build_targets"]
