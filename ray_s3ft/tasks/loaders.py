"""Examples for a run: generated for the built-in task, loaded from files or the hub otherwise.

Rows come from ``readers`` (local files one row at a time, in the formats listed there, or a
saved dataset / hub name through ``datasets``), so that a broken row is skipped and named.

Every row then goes through the task's converter, which holds each field to one rule: text
fields must be non-empty strings (an NQ answer may also be a number), so a missing field, a null,
an empty string or another type is a bad row. With token counters, a row over a token budget
is a bad row too (``data_report``): a prompt longer than ``data.max_prompt_tokens`` (the engines
would cut its start off) or, in the training split, a gold answer longer than
``data.max_response_tokens`` (an SFT step could not train on all of it).

Reading stops once ``limit`` usable rows are found, so a file's counts cover the rows read.
What every file gave goes to a ``data_report.DataReport``, which also decides when a file is a
``DataError`` (no rows, no usable row, too many bad ones); ``load_run_data`` loads a run's sets
and writes that report to ``data_report.json`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path

from ray_s3ft.tasks.data_report import DataReport, FileReport
from ray_s3ft.tasks.readers import RowError, kind_of, open_rows
from ray_s3ft.tasks.types import DataError, Example

# ---- row converters: dict -> Example, raising RowError for a broken row ---------------------


def _present(row: dict, key: str):
    if key not in row:
        raise RowError(f"missing field {key!r}")
    if row[key] is None:
        raise RowError(f"{key!r} is null")
    return row[key]


def _text(row: dict, key: str) -> str:
    value = _present(row, key)
    if not isinstance(value, str):
        raise RowError(f"{key!r} must be a string, got {kind_of(value)}")
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


def _tests(row: dict, key: str) -> tuple[str, ...]:
    tests = _present(row, key)
    if not (isinstance(tests, (list, tuple)) and all(isinstance(t, str) for t in tests)):
        raise RowError(f"{key!r} must be a list of strings, got {kind_of(tests)}")
    tests = tuple(t for t in tests if t.strip())
    if not tests:
        raise RowError(f"empty field {key!r}")
    return tests


def _mbpp(row: dict, id: str) -> Example:
    text, code, tests = _text(row, "text"), _text(row, "code"), _tests(row, "test_list")
    # optional "prompt_tests": the tests the prompt shows (the named set: the first assert
    # only, so RL cannot hard-code the others); all of "test_list" score the answer
    shown = _tests(row, "prompt_tests") if "prompt_tests" in row else tests
    prompt = f"{text.strip()}\nYour code should pass these tests:\n" + "\n".join(shown)
    return Example(
        id=id, skill="mbpp", prompt=prompt, gold=code, answer=code, verifier="code", tests=tests
    )


def _nq(row: dict, id: str) -> Example:
    """Judged by ``nq_match`` (normalised exact match against any alias, the answers joined by
    " | "), or as ``load_examples``' ``verifier`` says."""
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
        verifier="nq_match",
    )


CONVERTERS = {"gsm8k": _gsm8k, "mbpp": _mbpp, "nq": _nq}
# tasks whose examples are judged as judge.verifier says, in evaluation too (nq: nq_match or
# llm); GSM8K and MBPP examples keep math and code, their metric whatever judges the rewards
FOLLOWS_JUDGE = ("nq",)


# ---- loading ------------------------------------------------------------------------------


def load_examples(
    task: str,
    source: str,
    split: str,
    limit: int | None = None,
    *,
    report: DataReport | None = None,
    template: str | None = None,
    trains_on_gold: bool = False,
    verifier: str | None = None,
) -> list[Example]:
    """The first `limit` usable rows of `source` as Examples, ids ``{split}-{row index:05d}``.

    ``template``: the prompt template (``{question}``) each example's prompt goes through; None
    = the task's own (``prompts.TASK_PROMPTS``). Prompt lengths are checked after it.
    ``trains_on_gold``: the gold answers are SFT targets (the training split), held to
    ``data.max_response_tokens``.
    ``verifier``: the resolved ``judge.verifier``, which a ``FOLLOWS_JUDGE`` task's examples
    declare; None = the converter's.
    Bad rows are recorded in `report` (without one: logged, and only a file with no usable row
    is an error); DataError for an unreadable, empty, unusable or too broken file.
    """
    from ray_s3ft.prompts import task_prompt_template

    if task not in CONVERTERS:
        raise DataError(f"no loader for task {task!r}; known: {', '.join(CONVERTERS)}")
    convert = CONVERTERS[task]
    template = task_prompt_template(task, template)
    report = DataReport(warn=True) if report is None else report
    name, rows = open_rows(source, split)
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
                raise RowError(f"not a JSON object (got {kind_of(row)})")
            example = apply_template(convert(row, f"{split}-{i:05d}"), template)
            if verifier is not None and task in FOLLOWS_JUDGE:
                example = dataclasses.replace(example, verifier=verifier)
            report.check_prompt(example.prompt)
            if trains_on_gold:
                report.check_gold(example.gold)
            out.append(example)
        except RowError as e:
            file.add_problem(f"{name}:{n}", e)
    file.used = len(out)
    report.add(file, task)
    return out


def apply_template(example: Example, template: str) -> Example:
    """The example with its prompt put through a ``{question}`` template."""
    if template == "{question}":
        return example
    return dataclasses.replace(example, prompt=template.format(question=example.prompt))


def load_train_examples(
    data, report: DataReport | None = None, verifier: str | None = None
) -> list[Example]:
    """The training split described by a ``DataConfig``, held to its rules."""
    from ray_s3ft.prompts import task_prompt_template
    from ray_s3ft.tasks import builtin, olmo_tasks

    if data.task == "builtin":
        template = task_prompt_template("builtin", data.prompt_template)
        examples = builtin.task_split("train", data.train_size, data.seed)
        examples = [apply_template(ex, template) for ex in examples]
        for ex in examples if report is not None else ():
            try:  # generated data has no row to skip: budgets too small for it stop the run
                report.check_prompt(ex.prompt)
                report.check_gold(ex.gold)
            except RowError as e:
                raise DataError(f"built-in task, example {ex.id}: {e}") from None
        return examples
    report = DataReport.for_config(data, warn=True) if report is None else report
    return load_examples(
        data.task, olmo_tasks.resolve(data.train_path, "train"), "train", limit=data.train_size,
        report=report, template=data.prompt_template, trains_on_gold=True, verifier=verifier,
    )  # fmt: skip


def load_eval_examples(
    data, eval_cfg, report: DataReport | None = None, verifier: str | None = None
) -> dict[str, list[Example]]:
    """``{"task": eval split, <set>: held-out examples, ...}`` for a data and eval section. A
    held-out set is a built-in skill, a multiple-choice ``.jsonl`` file named by its stem, a public
    suite (``mmlu``, ``arc_easy``, ``arc_challenge``, ``hellaswag``, fetched once:
    ``tasks/suites.py``), MATH-500 (``math500``, ``tasks/math500.py``), or HumanEval
    (``humaneval``, or a HumanEval-format ``.jsonl`` / ``.jsonl.gz`` file). ``data.eval_path`` may name a set (``tasks/olmo_tasks.py``)."""
    from ray_s3ft.prompts import task_prompt_template
    from ray_s3ft.tasks import benchmarks, builtin, humaneval, math500, olmo_tasks, suites

    if data.task == "builtin":
        template = task_prompt_template("builtin", data.prompt_template)
        examples = builtin.task_split("eval", eval_cfg.task_size, data.seed)
        sets = {"task": [apply_template(ex, template) for ex in examples]}
    else:
        report = DataReport.for_config(data, warn=True) if report is None else report
        task = load_examples(
            data.task, olmo_tasks.resolve(data.eval_path, "eval"), "test", eval_cfg.task_size,
            report=report, template=data.prompt_template, verifier=verifier,
        )  # fmt: skip
        sets = {"task": task}
    for entry in eval_cfg.heldout:
        if humaneval.is_humaneval_entry(entry):
            name = humaneval.set_name(entry)
            examples = humaneval.load_humaneval(entry, eval_cfg.heldout_size)
        elif math500.is_math500_entry(entry):
            name, examples = entry, math500.load_math500(eval_cfg.heldout_size)
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
    count_response_tokens: Callable[[str], int] | None = None,
    with_eval: bool = True,
    say: Callable[[str], None] = print,
) -> tuple[list[Example], dict[str, list[Example]]]:
    """A run's training examples and (`with_eval`) eval sets, held to ``cfg.data``'s rules
    (token budgets: with ``count_tokens`` / ``count_response_tokens``, ``DataReport``).

    Writes ``run_dir/data_report.json`` (``{"files": {}}`` for the built-in task's generated data)
    and says one line per file read. A DataError, raised before any actor starts, names the
    written report; so does a question in both the training and the task's eval set.
    """
    from ray_s3ft.config import resolved_judge
    from ray_s3ft.prompts import task_prompt_template
    from ray_s3ft.tasks.overlap import check_disjoint

    d, verifier = cfg.data, resolved_judge(cfg).verifier
    report = DataReport.for_config(d, count_tokens, count_response_tokens=count_response_tokens)
    try:
        examples = load_train_examples(d, report, verifier)
        eval_sets = load_eval_examples(d, cfg.eval, report, verifier) if with_eval else {}
        if with_eval and d.task != "builtin":
            template = task_prompt_template(d.task, d.prompt_template)
            check_disjoint(examples, eval_sets["task"], d.train_path, d.eval_path, template)
    except DataError as e:
        if not report.files:
            raise
        raise DataError(f"{e}\nevery file's counts and problems: {report.write(run_dir)}") from None
    path = report.write(run_dir)
    for line in report.summary(path):
        say(line)
    return examples, eval_sets
