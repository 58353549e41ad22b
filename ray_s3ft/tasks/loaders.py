"""Examples for a run: generated for the built-in task, loaded from files or the hub otherwise.

Local files are read here, one row at a time, so that a broken row is skipped and named by
``file:line: reason`` instead of failing the whole file:

    .jsonl     one JSON object a line; line numbers are the file's (blank lines are formatting,
               skipped and not counted as rows)
    .json      a list of objects, or {"data": [...]}; a row is named by the line its element
               starts on. A ``.json`` file whose first line is an object by itself is JSON lines
               (as ``datasets`` reads it). A file that is not valid JSON as a whole is one error.
    .csv       a header line, then one row a record; named by the line the record starts on
    .parquet   named by the 1-based data row

A directory written by ``Dataset.save_to_disk`` or a hub name (network at run time) is read with
``datasets``; its rows are named ``source[split]:N``, N the 1-based row.

Every row then goes through the task's converter, which holds each field to one rule: text
fields must be non-empty strings (an NQ answer may also be a number), so a missing field, a null,
an empty string or another type is a bad row. With a token counter, a prompt longer than
``data.max_prompt_tokens`` is a bad row too (the engines would cut its start off).

Reading stops once ``limit`` usable rows are found, so a file's counts cover the rows read. A
file with no rows, or with no usable row, or with a larger share of bad rows than
``data.max_bad_fraction``, is a ``DataError``. ``load_run_data`` loads a run's sets and writes
what every file gave to ``data_report.json`` in the run directory.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ray_s3ft.tasks.types import DataError, Example

log = logging.getLogger(__name__)

REPORT_NAME = "data_report.json"
MAX_LISTED_PROBLEMS = 1000  # per file in data_report.json; the rest are counted
_QUOTED = 3  # problems quoted in an error message or a warning


class RowError(ValueError):
    """One row that cannot be used; the message is the reason."""


# ---- row converters: dict -> Example, raising RowError for a broken row ---------------------


def _kind(value) -> str:
    """A value's JSON type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _present(row: dict, key: str):
    if key not in row:
        raise RowError(f"missing field {key!r}")
    if row[key] is None:
        raise RowError(f"{key!r} is null")
    return row[key]


def _text(row: dict, key: str) -> str:
    value = _present(row, key)
    if not isinstance(value, str):
        raise RowError(f"{key!r} must be a string, got {_kind(value)}")
    if not value.strip():
        raise RowError(f"empty field {key!r}")
    return value


def _gsm8k(row: dict, id: str) -> Example:
    question, solution = _text(row, "question").strip(), _text(row, "answer").strip()
    if "####" not in solution:
        raise RowError("'answer' has no '#### N' final line")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise RowError("empty final answer after '####'")
    # GSM8K's "<<48/2=24>>" calculator annotations are not part of the answer's prose.
    gold = re.sub(r"<<[^>]*>>", "", solution)
    return Example(id=id, skill="gsm8k", prompt=question, gold=gold, answer=final, verifier="math")


def _mbpp(row: dict, id: str) -> Example:
    text, code, tests = _text(row, "text"), _text(row, "code"), _present(row, "test_list")
    if not (isinstance(tests, (list, tuple)) and all(isinstance(t, str) for t in tests)):
        raise RowError(f"'test_list' must be a list of strings, got {_kind(tests)}")
    tests = tuple(t for t in tests if t.strip())
    if not tests:
        raise RowError("empty field 'test_list'")
    prompt = f"{text.strip()}\nYour code should pass these tests:\n" + "\n".join(tests)
    return Example(
        id=id, skill="mbpp", prompt=prompt, gold=code, answer=code, verifier="code", tests=tests
    )


def _nq(row: dict, id: str) -> Example:
    key = "answer" if "answer" in row or "answers" not in row else "answers"
    answers = _present(row, key)
    if not isinstance(answers, (list, tuple)):
        answers = [answers]
    # a short answer is naturally a number (a year, a count); anything else must be text
    if not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in answers):
        raise RowError(f"{key!r} must be a string, a number or a list of them")
    answers = [str(a).strip() for a in answers if str(a).strip()]
    if not answers:
        raise RowError(f"empty field {key!r}")
    question = _text(row, "question").strip()
    if row.get("context") not in (None, ""):
        question = f"{_text(row, 'context').strip()}\n\nQuestion: {question}"
    return Example(
        id=id,
        skill="nq",
        prompt=question,
        gold=answers[0],
        answer=" | ".join(answers),
        verifier="llm",
    )


CONVERTERS = {"gsm8k": _gsm8k, "mbpp": _mbpp, "nq": _nq}


# ---- readers: (row number, row) pairs; a row that cannot even be parsed is a RowError --------

Rows = Iterator[tuple[int, object]]
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _not_utf8(raw: bytes, e: UnicodeDecodeError) -> RowError:
    return RowError(f"not UTF-8 (byte 0x{raw[e.start]:02x} at col {e.start + 1})")


def _jsonl_rows(path: Path) -> Rows:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, _not_utf8(raw, e)
                continue
            try:
                yield n, json.loads(text.rstrip("\r\n"))  # so an error's column is on the line
            except json.JSONDecodeError as e:
                yield n, RowError(f"invalid JSON: {e.msg} (col {e.colno})")


def _first_line_is_object(data: bytes) -> bool:
    first = next((line for line in data.splitlines() if line.strip()), b"")
    try:
        return isinstance(json.loads(first.removeprefix(codecs.BOM_UTF8)), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _array_items(text: str, i: int) -> Rows:
    """(line, element) of each element of the valid JSON array that starts at ``text[i]``."""
    line, pos = 1 + text.count("\n", 0, i), i
    i = _WS.match(text, i + 1).end()
    while text[i] != "]":
        line, pos = line + text.count("\n", pos, i), i
        value, i = _DECODER.raw_decode(text, i)
        yield line, value
        i = _WS.match(text, i).end()
        if text[i] == ",":
            i = _WS.match(text, i + 1).end()


def _data_array_start(text: str) -> int:
    """Where the "data" array of a valid top-level JSON object starts (the last, as json.loads)."""
    i, start = _WS.match(text, _WS.match(text).end() + 1).end(), -1
    while text[i] != "}":
        key, i = _DECODER.raw_decode(text, i)
        i = _WS.match(text, _WS.match(text, i).end() + 1).end()  # past the ':'
        start = i if key == "data" else start
        _, i = _DECODER.raw_decode(text, i)
        i = _WS.match(text, i).end()
        if text[i] == ",":
            i = _WS.match(text, i + 1).end()
    return start


def _json_rows(path: Path) -> Rows:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        if _first_line_is_object(data):
            yield from _jsonl_rows(path)
            return
        if isinstance(e, UnicodeDecodeError):
            line = data.count(b"\n", 0, e.start) + 1
            where = f"{line}: not UTF-8 (byte 0x{data[e.start]:02x})"
        else:
            where = f"{e.lineno}: invalid JSON: {e.msg} (col {e.colno})"
        raise DataError(
            f"{path}:{where}; a .json file must be one JSON document (a list of objects or "
            '{"data": [...]}) or JSON lines (use .jsonl to have broken lines skipped)'
        ) from None
    if isinstance(doc, list):
        yield from _array_items(text, _WS.match(text).end())
    elif isinstance(doc, dict) and isinstance(doc.get("data"), list):
        yield from _array_items(text, _data_array_start(text))
    elif isinstance(doc, dict):  # one object: one row
        yield 1 + text.count("\n", 0, _WS.match(text).end()), doc
    else:
        raise DataError(
            f'{path}: a .json file must hold a list of objects or {{"data": [...]}}, '
            f"not {_kind(doc)}"
        )


_SURROGATE = re.compile("[\udc80-\udcff]")


def _csv_rows(path: Path) -> Rows:
    # undecodable bytes become lone surrogates, so one bad row does not stop the reader
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            start = reader.line_num + 1
            for record in reader:
                n, start = start, reader.line_num + 1
                if not record:  # a blank line
                    continue
                if len(record) != len(header):
                    yield n, RowError(f"{len(record)} fields, the header has {len(header)}")
                    continue
                row = dict(zip(header, record))
                bad = next((k for k, v in row.items() if _SURROGATE.search(v)), None)
                if bad is None:
                    yield n, row
                else:
                    byte = ord(_SURROGATE.search(row[bad]).group()) - 0xDC00
                    yield n, RowError(f"not UTF-8 (byte 0x{byte:02x} in column {bad!r})")
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: not readable as CSV: {e}") from None


def _parquet_rows(path: Path) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError) as e:
        where = f" after row {n}" if n else ""
        raise DataError(f"{path}: not readable as parquet{where}: {e}") from None


def _dataset_rows(source: str, split: str) -> Rows:
    import datasets

    try:
        if Path(source).is_dir():
            ds = datasets.load_from_disk(source)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{source}: no split {split!r}; it has {', '.join(ds)}")
                ds = ds[split]
        else:  # a hub name such as "openai/gsm8k" (GSM8K's configuration is "main")
            config = "main" if source.endswith("gsm8k") else None
            ds = datasets.load_dataset(source, config, split=split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; the user needs the source and reason
        raise DataError(f"{source}: cannot be read as a data set: {e}") from e
    yield from enumerate(ds, start=1)


_FILE_READERS = {
    ".jsonl": _jsonl_rows,
    ".json": _json_rows,
    ".csv": _csv_rows,
    ".parquet": _parquet_rows,
}


def _open(source: str, split: str) -> tuple[str, Rows]:
    """The name rows are reported under, and the rows."""
    path = Path(source)
    if not path.is_dir() and path.suffix.lower() in _FILE_READERS:
        if not path.is_file():
            raise DataError(f"{source}: no such file")
        return source, _FILE_READERS[path.suffix.lower()](path)
    return f"{source}[{split}]", _dataset_rows(source, split)


# ---- the report -------------------------------------------------------------------------------


@dataclass
class FileReport:
    """What reading one file gave: rows read, rows used, and each bad row's problem."""

    name: str
    rows: int = 0
    used: int = 0
    complete: bool = True  # False when reading stopped after `limit` usable rows
    problems: list[str] = field(default_factory=list)

    @property
    def bad(self) -> int:
        return len(self.problems)

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.rows if self.rows else 0.0

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "used": self.used,
            "bad": self.bad,
            "bad_fraction": self.bad_fraction,
            "complete": self.complete,
            "problems": self.problems[:MAX_LISTED_PROBLEMS],
            "problems_not_listed": max(0, self.bad - MAX_LISTED_PROBLEMS),
        }


@dataclass
class DataReport:
    """The rules a run's rows are held to, and what each file read gave (``data_report.json``).

    ``count_tokens(prompt)`` is the prompt's length as the engines see it (``prompt_token_counter``);
    without it prompt lengths are not checked. ``warn`` logs each file's bad rows, for callers
    that do not write the report themselves.
    """

    max_bad_fraction: float = 1.0
    max_prompt_tokens: int | None = None
    count_tokens: Callable[[str], int] | None = None
    warn: bool = False
    files: dict[str, FileReport] = field(default_factory=dict)

    @classmethod
    def for_config(
        cls, data, count_tokens: Callable[[str], int] | None = None, warn: bool = False
    ) -> DataReport:
        """The rules of a ``DataConfig``."""
        return cls(data.max_bad_fraction, data.max_prompt_tokens, count_tokens, warn)

    def check_prompt(self, prompt: str) -> None:
        if self.count_tokens is None or self.max_prompt_tokens is None:
            return
        n = self.count_tokens(prompt)
        if n > self.max_prompt_tokens:
            raise RowError(
                f"prompt is {n} tokens > data.max_prompt_tokens {self.max_prompt_tokens}"
            )

    def add(self, file: FileReport, task: str) -> None:
        """Record a file's counts; DataError if it is empty, unusable or too broken."""
        # a file read twice (train and eval) keeps its longer read: both start at its first row
        if file.name not in self.files or file.rows >= self.files[file.name].rows:
            self.files[file.name] = file
        first = "; ".join(file.problems[:_QUOTED])
        more = f"; and {file.bad - _QUOTED:,} more" if file.bad > _QUOTED else ""
        if self.warn and file.bad:
            log.warning(
                "%s: skipped %d bad row(s) of %d: %s%s", file.name, file.bad, file.rows, first, more
            )
        if not file.rows:
            raise DataError(f"{file.name}: empty (no data rows)")
        if not file.used:
            raise DataError(f"{file.name}: no usable {task} rows ({file.bad:,} bad: {first}{more})")
        if file.bad_fraction > self.max_bad_fraction:
            raise DataError(
                f"{file.name}: {file.bad:,} of {file.rows:,} rows are bad "
                f"({file.bad_fraction:.2%} > data.max_bad_fraction {self.max_bad_fraction:g}): "
                f"{first}{more}"
            )

    def to_dict(self) -> dict:
        return {
            "files": {name: f.to_dict() for name, f in self.files.items()},
            "max_bad_fraction": self.max_bad_fraction,
            # null when prompt lengths were not checked
            "max_prompt_tokens": self.max_prompt_tokens if self.count_tokens else None,
        }

    def write(self, run_dir: str | os.PathLike) -> Path:
        """``run_dir/data_report.json`` (atomic); returns its path."""
        path = Path(run_dir) / REPORT_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    def summary(self, path: str | os.PathLike) -> list[str]:
        """One console line per file, pointing at the written report where rows were skipped."""
        out = []
        for f in self.files.values():
            line = f"data: {f.name}: {f.rows:,} rows read, {f.used:,} used, "
            out.append(line + (f"{f.bad:,} bad skipped (see {path})" if f.bad else "none bad"))
        return out


def prompt_token_counter(tokenizer) -> Callable[[str], int]:
    """A prompt's token count as the rollout engines see it: chat-formatted, then tokenized
    (``RolloutWorker.encode_prompts``)."""
    from ray_s3ft.model.encoding import render_prompt

    def count(prompt: str) -> int:
        return len(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False).input_ids)

    return count


# ---- loading ------------------------------------------------------------------------------


def load_examples(
    task: str,
    source: str,
    split: str,
    limit: int | None = None,
    *,
    report: DataReport | None = None,
    template: str | None = None,
) -> list[Example]:
    """The first `limit` usable rows of `source` as Examples, ids ``{split}-{row index:05d}``.

    ``template``: the prompt template (``{question}``) each example's prompt goes through; None
    = the task's own (``prompts.TASK_PROMPTS``). Prompt lengths are checked after it.
    Bad rows are recorded in `report` (without one: logged, and only a file with no usable row
    is an error); DataError for an unreadable, empty, unusable or too broken file.
    """
    from ray_s3ft.prompts import task_prompt_template

    if task not in CONVERTERS:
        raise DataError(f"no loader for task {task!r}; known: {', '.join(CONVERTERS)}")
    convert = CONVERTERS[task]
    template = task_prompt_template(task, template)
    report = DataReport(warn=True) if report is None else report
    name, rows = _open(source, split)
    file, out = FileReport(name), []
    for i, (n, row) in enumerate(rows):
        if limit is not None and len(out) >= limit:
            file.complete = False
            break
        file.rows += 1
        try:
            if isinstance(row, RowError):
                raise row
            if not isinstance(row, dict):
                raise RowError(f"not a JSON object (got {_kind(row)})")
            example = apply_template(convert(row, f"{split}-{i:05d}"), template)
            report.check_prompt(example.prompt)
            out.append(example)
        except RowError as e:
            file.problems.append(f"{name}:{n}: {e}")
    file.used = len(out)
    report.add(file, task)
    return out


def apply_template(example: Example, template: str) -> Example:
    """The example with its prompt put through a ``{question}`` template."""
    if template == "{question}":
        return example
    return dataclasses.replace(example, prompt=template.format(question=example.prompt))


def load_train_examples(data, report: DataReport | None = None) -> list[Example]:
    """The training split described by a ``DataConfig``, held to its rules."""
    from ray_s3ft.prompts import task_prompt_template
    from ray_s3ft.tasks import builtin

    if data.task == "builtin":
        template = task_prompt_template("builtin", data.prompt_template)
        examples = builtin.task_split("train", data.train_size, data.seed)
        return [apply_template(ex, template) for ex in examples]
    report = DataReport.for_config(data, warn=True) if report is None else report
    return load_examples(
        data.task, data.train_path, "train", limit=data.train_size, report=report,
        template=data.prompt_template,
    )  # fmt: skip


def load_eval_examples(
    data, eval_cfg, report: DataReport | None = None
) -> dict[str, list[Example]]:
    """``{"task": eval split, <set>: held-out examples, ...}`` for a data and eval section. A
    held-out set is a built-in skill, a multiple-choice ``.jsonl`` file named by its stem, a public
    suite (``mmlu``, ``arc_easy``, ``arc_challenge``, fetched once: ``tasks/suites.py``), or
    HumanEval (``humaneval``, or a HumanEval-format ``.jsonl`` / ``.jsonl.gz`` file)."""
    from ray_s3ft.prompts import task_prompt_template
    from ray_s3ft.tasks import benchmarks, builtin, humaneval, suites

    if data.task == "builtin":
        template = task_prompt_template("builtin", data.prompt_template)
        examples = builtin.task_split("eval", eval_cfg.task_size, data.seed)
        sets = {"task": [apply_template(ex, template) for ex in examples]}
    else:
        report = DataReport.for_config(data, warn=True) if report is None else report
        task = load_examples(
            data.task, data.eval_path, "test", eval_cfg.task_size, report=report,
            template=data.prompt_template,
        )  # fmt: skip
        sets = {"task": task}
    for entry in eval_cfg.heldout:
        if humaneval.is_humaneval_entry(entry):
            name = humaneval.set_name(entry)
            examples = humaneval.load_humaneval(entry, eval_cfg.heldout_size)
        elif suites.is_suite_entry(entry):
            name, examples = entry, suites.load_suite(entry, eval_cfg.heldout_size)
        elif benchmarks.is_choice_file(entry):
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


def load_run_data(
    cfg,
    run_dir: str | os.PathLike,
    *,
    count_tokens: Callable[[str], int] | None = None,
    with_eval: bool = True,
    say: Callable[[str], None] = print,
) -> tuple[list[Example], dict[str, list[Example]]]:
    """A run's training examples and (`with_eval`) eval sets, held to ``cfg.data``'s rules.

    Writes ``run_dir/data_report.json`` (``{"files": {}}`` for the built-in task's generated data)
    and says one line per file read. A DataError, raised before any actor starts, names the
    written report.
    """
    report = DataReport.for_config(cfg.data, count_tokens)
    try:
        examples = load_train_examples(cfg.data, report)
        eval_sets = load_eval_examples(cfg.data, cfg.eval, report) if with_eval else {}
    except DataError as e:
        if not report.files:
            raise
        raise DataError(f"{e}\nevery file's counts and problems: {report.write(run_dir)}") from None
    path = report.write(run_dir)
    for line in report.summary(path):
        say(line)
    return examples, eval_sets
