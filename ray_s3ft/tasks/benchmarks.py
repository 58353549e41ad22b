"""Local multiple-choice benchmarks (MMLU's shape) as held-out sets.

An ``eval.heldout`` entry that ends in ``.jsonl`` is such a file, one JSON
object a line: ``{"question": str, "choices": [str, ...], "answer": 1 or "B"}`` with 2 to 10
choices and an optional ``"subject"``. The set is named by the file's stem; its prompts list the
choices as ``A. ...`` lines. They are scored by log-likelihood, as lm-evaluation-harness scores
MMLU and ARC (``ray_s3ft.evaluation.scoring.score_choices``): the choice whose continuation the model finds
likeliest is its answer; ``read_choice`` (a letter read from a generated answer) remains for
responses that were generated.

The file is read line by line here rather than with ``datasets``, so that each broken line (not
JSON, not UTF-8, a missing question, bad choices, an answer out of range) is skipped and reported
by its line number; a file with no usable line is a ``DataError`` naming the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ray_s3ft.tasks.types import DataError, Example

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
_SHOWN = 5  # broken lines named in the warning; the rest are counted


def is_choice_file(entry: str) -> bool:
    """Whether an ``eval.heldout`` entry names a multiple-choice file (else a built-in skill)."""
    return entry.endswith(".jsonl")


def choice_prompt(question: str, choices: list[str]) -> str:
    lines = [question.strip()] + [f"{L}. {c.strip()}" for L, c in zip(LETTERS, choices)]
    return "\n".join(lines) + "\nAnswer with the letter of the correct choice."


def question_of(example) -> str:
    """The question of a multiple-choice Example, without its lettered choices."""
    return example.prompt.split("\nA. ", 1)[0].strip()


def _example(row, skill: str, id: str) -> Example:
    """One line's object -> Example; ValueError with the reason for a broken line."""
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("missing or empty question")
    if not (
        isinstance(choices, list)
        and 2 <= len(choices) <= len(LETTERS)
        and all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise ValueError(f"choices must be a list of 2 to {len(LETTERS)} non-empty strings")
    allowed = LETTERS[: len(choices)]
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(choices):
            raise ValueError(f"answer {answer} is out of range for {len(choices)} choices")
        letter = allowed[answer]
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in allowed:
        letter = answer.strip().upper()
    else:
        raise ValueError(
            f"answer must be an index 0..{len(choices) - 1} or a letter A..{allowed[-1]}; "
            f"got {answer!r}"
        )
    return Example(
        id=id,
        skill=skill,
        prompt=choice_prompt(question, choices),
        gold=letter,
        answer=letter,
        verifier="choice",
        choices=tuple(c.strip() for c in choices),
    )


def load_choice_file(path: str | Path, size: int) -> list[Example]:
    """The first `size` usable lines of a multiple-choice ``.jsonl`` file, as Examples."""
    source, path = str(path), Path(path)
    if not path.is_file():
        raise DataError(f"{source}: no such multiple-choice file")
    skill = path.stem
    with open(path, "rb") as f:
        return read_json_lines(
            f, size, lambda row, n: _example(row, skill, f"{skill}-{n:05d}"), source,
            "multiple-choice",
        )  # fmt: skip


def read_json_lines(f, size: int, convert, source: str, what: str) -> list[Example]:
    """The first ``size`` usable lines of an open binary JSON-lines file, each through
    ``convert(row, line_number)`` (a ValueError names a broken row). Broken lines are skipped
    and named in a warning; a file with none usable is a DataError naming ``source``."""
    out, broken = [], []
    for lineno, raw in enumerate(f, start=1):
        if len(out) >= size:
            break
        try:
            text = raw.decode("utf-8")
            if not text.strip():
                continue
            out.append(convert(json.loads(text), lineno))
        except UnicodeDecodeError:
            broken.append((lineno, "not UTF-8"))
        except json.JSONDecodeError as e:
            broken.append((lineno, f"invalid JSON ({e.msg})"))
        except ValueError as e:
            broken.append((lineno, str(e)))
    shown = [f"{source}:{n}: {why}" for n, why in broken[:_SHOWN]]
    if broken:
        more = f"; and {len(broken) - _SHOWN} more" if len(broken) > _SHOWN else ""
        log.warning("skipped %d broken line(s): %s%s", len(broken), "; ".join(shown), more)
    if not out:
        first = f"; first: {shown[0]}" if broken else ""
        raise DataError(f"{source}: no usable {what} lines ({len(broken)} broken{first})")
    return out
