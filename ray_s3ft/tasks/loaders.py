"""Examples for a run: generated for the built-in task, loaded from files or the hub otherwise.

Real data sets are read with the ``datasets`` library from a local file (``.jsonl``, ``.json``,
``.parquet``, ``.csv``), a directory written by ``Dataset.save_to_disk``, or a hub name (which
needs network access at run time). Rows that cannot be turned into an example are skipped,
counted, and reported with the file and row number; a file in which no row survives is an error.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ray_s3ft.tasks.types import Example

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file that cannot be used; the message names the file (and row, where there is one)."""


# ---- row converters: dict -> Example, raising KeyError/ValueError for a broken row -----------


def _gsm8k(row: dict, id: str) -> Example:
    question, solution = str(row["question"]).strip(), str(row["answer"]).strip()
    if "####" not in solution:
        raise ValueError("answer has no '#### N' final line")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise ValueError("empty final answer after '####'")
    # GSM8K's "<<48/2=24>>" calculator annotations are not part of the answer's prose.
    gold = re.sub(r"<<[^>]*>>", "", solution)
    return Example(id=id, skill="gsm8k", prompt=question, gold=gold, answer=final, verifier="math")


def _mbpp(row: dict, id: str) -> Example:
    tests = tuple(str(t) for t in row["test_list"])
    if not tests:
        raise ValueError("empty test_list")
    prompt = f"{str(row['text']).strip()}\nYour code should pass these tests:\n" + "\n".join(tests)
    code = str(row["code"])
    return Example(
        id=id, skill="mbpp", prompt=prompt, gold=code, answer=code, verifier="code", tests=tests
    )


def _nq(row: dict, id: str) -> Example:
    answers = row["answer"] if "answer" in row else row["answers"]
    if isinstance(answers, str):
        answers = [answers]
    answers = [str(a).strip() for a in answers if str(a).strip()]
    if not answers:
        raise ValueError("no answer")
    question = str(row["question"]).strip()
    if "context" in row and row["context"]:
        question = f"{str(row['context']).strip()}\n\nQuestion: {question}"
    return Example(
        id=id,
        skill="nq",
        prompt=question,
        gold=answers[0],
        answer=" | ".join(answers),
        verifier="llm",
    )


CONVERTERS = {"gsm8k": _gsm8k, "mbpp": _mbpp, "nq": _nq}
_SUFFIX_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _load_rows(source: str, split: str):
    import datasets

    path = Path(source)
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    if path.suffix in _SUFFIX_BUILDERS:
        if not path.is_file():
            raise DataError(f"{source}: no such file")
        return datasets.load_dataset(
            _SUFFIX_BUILDERS[path.suffix], data_files=str(path), split="train"
        )
    # A hub name such as "openai/gsm8k" (GSM8K's configuration is "main").
    config = "main" if source.endswith("gsm8k") else None
    return datasets.load_dataset(source, config, split=split)


def load_examples(task: str, source: str, split: str, limit: int | None = None) -> list[Example]:
    if task not in CONVERTERS:
        raise DataError(f"no loader for task {task!r}; known: {', '.join(CONVERTERS)}")
    convert = CONVERTERS[task]
    try:
        rows = _load_rows(source, split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; the user needs the file and the reason
        raise DataError(f"{source}: cannot be read as a {task} data set: {e}") from e
    out, skipped = [], []
    for i, row in enumerate(rows):
        if limit is not None and len(out) >= limit:
            break
        try:
            out.append(convert(row, f"{split}-{i:05d}"))
        except (KeyError, ValueError, TypeError) as e:
            skipped.append(f"row {i}: {type(e).__name__}: {e}")
    if skipped:
        log.warning("%s: skipped %d broken row(s); first: %s", source, len(skipped), skipped[0])
    if not out:
        raise DataError(
            f"{source}: no usable {task} rows ({len(skipped)} broken; first: {skipped[:1]})"
        )
    return out


def load_train_examples(data) -> list[Example]:
    """The training split described by a ``DataConfig``."""
    from ray_s3ft.tasks import builtin

    if data.task == "builtin":
        return builtin.task_split("train", data.train_size, data.seed)
    return load_examples(data.task, data.train_path, "train", limit=data.train_size)


def load_eval_examples(data, eval_cfg) -> dict[str, list[Example]]:
    """``{"task": eval split, <set>: held-out examples, ...}`` for a data and eval section. A
    held-out set is a built-in skill, or a multiple-choice ``.jsonl`` file named by its stem."""
    from ray_s3ft.tasks import benchmarks, builtin

    if data.task == "builtin":
        sets = {"task": builtin.task_split("eval", eval_cfg.task_size, data.seed)}
    else:
        sets = {"task": load_examples(data.task, data.eval_path, "test", limit=eval_cfg.task_size)}
    for entry in eval_cfg.heldout:
        if benchmarks.is_choice_file(entry):
            name = Path(entry).stem
            examples = benchmarks.load_choice_file(entry, eval_cfg.heldout_size)
        else:
            name = entry
            examples = builtin.heldout_split(entry, eval_cfg.heldout_size, data.seed)
        if name in sets or name == "heldout_mean":
            raise DataError(
                f"{entry}: eval.heldout set name {name!r} is taken (the task set, a built-in "
                "skill or another file with that stem); rename the file"
            )
        sets[name] = examples
    return sets
