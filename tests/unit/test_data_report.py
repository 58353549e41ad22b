"""data_report.json: what every data file of a run gave, and the run stopped before actors start."""

import json

import pytest

from ray_s3ft.config import load_config
from ray_s3ft.tasks import data_report
from ray_s3ft.tasks.data_report import prompt_token_counter
from ray_s3ft.tasks.loaders import load_run_data
from ray_s3ft.tasks.types import DataError


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _good(i):
    return json.dumps({"question": f"What is {i} + 0?", "answer": f"#### {i}"})


def _cfg(train, test, *more):
    return load_config(
        overrides=[
            "data.task=gsm8k",
            f"data.train_path={train}",
            f"data.eval_path={test}",
            "eval.heldout_size=4",
            *more,
        ]
    )


def test_report_lists_each_file_and_the_console_gets_one_line_each(tmp_path):
    train = _write(tmp_path / "train.jsonl", [_good(i) for i in range(19)] + ["{not json"])
    test = _write(tmp_path / "test.jsonl", [_good(i) for i in range(100, 105)])  # not trained on
    said = []
    examples, eval_sets = load_run_data(_cfg(train, test), tmp_path / "run", say=said.append)
    assert len(examples) == 19 and len(eval_sets["task"]) == 5
    assert list(eval_sets) == ["task", "compare", "sort", "reverse"]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report == {
        "files": {
            train: {
                "rows": 20,
                "used": 19,
                "bad": 1,
                "bad_fraction": 0.05,
                "complete": True,
                "too_long": {"prompt": 0, "gold": 0},
                "problems": [
                    f"{train}:20: invalid JSON: Expecting property name enclosed in double "
                    "quotes (col 2)"
                ],
                "problems_not_listed": 0,
            },
            test: {
                "rows": 5,
                "used": 5,
                "bad": 0,
                "bad_fraction": 0.0,
                "complete": True,
                "too_long": {"prompt": 0, "gold": 0},
                "problems": [],
                "problems_not_listed": 0,
            },
        },
        "max_bad_fraction": 0.05,
        "max_prompt_tokens": None,  # no token counter given
        "max_response_tokens": None,
    }
    path = tmp_path / "run" / "data_report.json"
    assert said == [
        f"data: {train}: 20 rows read, 19 used, 1 bad skipped (see {path})",
        f"data: {test}: 5 rows read, 5 used, none bad",
    ]


def test_too_many_bad_rows_stop_with_the_report_written(tmp_path):
    train = _write(tmp_path / "train.jsonl", [_good(i) for i in range(18)] + ["[]", "{"])
    test = _write(tmp_path / "test.jsonl", [_good(100)])
    said = []
    with pytest.raises(DataError) as info:
        load_run_data(_cfg(train, test), tmp_path / "run", say=said.append)
    path = tmp_path / "run" / "data_report.json"
    assert str(info.value) == (
        f"{train}: 2 of 20 rows are bad (10.00% > data.max_bad_fraction 0.05): "
        f"{train}:19: not a JSON object (got a list); "
        f"{train}:20: invalid JSON: Expecting property name enclosed in double quotes (col 2)"
        f"\nevery file's counts and problems: {path}"
    )
    report = json.loads(path.read_text())
    assert list(report["files"]) == [train] and report["files"][train]["bad"] == 2
    assert said == []
    # a looser rule lets the same file through
    cfg = _cfg(train, test, "data.max_bad_fraction=0.1")
    assert len(load_run_data(cfg, tmp_path / "run", say=said.append)[0]) == 18


def test_prompts_too_long_for_the_tokenizer_are_bad_rows(tmp_path):
    long = json.dumps({"question": "seven " * 300, "answer": "#### 7"})
    train = _write(tmp_path / "train.jsonl", [_good(i) for i in range(30)] + [long])
    test = _write(tmp_path / "test.jsonl", [_good(100)])
    examples, _ = load_run_data(
        _cfg(train, test), tmp_path / "run", count_tokens=lambda p: len(p.split()), say=print
    )
    assert len(examples) == 30
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["max_prompt_tokens"] == 256
    # the length is the templated prompt's: the question's 300 words and the task template's
    from ray_s3ft.prompts import TASK_PROMPTS

    words = 300 + len(TASK_PROMPTS["gsm8k"].format(question="").split())
    assert report["files"][train]["problems"] == [
        f"{train}:31: prompt is {words} tokens > data.max_prompt_tokens 256"
    ]


def test_the_problem_list_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(data_report, "MAX_LISTED_PROBLEMS", 2)
    train = _write(tmp_path / "train.jsonl", ["{"] * 5 + [_good(1)])
    test = _write(tmp_path / "test.jsonl", [_good(100)])
    load_run_data(
        _cfg(train, test, "data.max_bad_fraction=1"), tmp_path / "run", with_eval=False, say=print
    )
    entry = json.loads((tmp_path / "run" / "data_report.json").read_text())["files"][train]
    assert (entry["bad"], len(entry["problems"]), entry["problems_not_listed"]) == (5, 2, 3)
    assert entry["problems"][1].startswith(f"{train}:2: invalid JSON")


def test_builtin_task_writes_a_report_without_files(tmp_path):
    cfg = load_config(overrides=["data.train_size=8", "eval.task_size=4", "eval.heldout_size=2"])
    said = []
    examples, eval_sets = load_run_data(cfg, tmp_path / "run", say=said.append)
    assert len(examples) == 8 and len(eval_sets["task"]) == 4
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report == {
        "files": {},
        "max_bad_fraction": 0.05,
        "max_prompt_tokens": None,
        "max_response_tokens": None,
    }
    assert said == []


def test_a_missing_file_fails_without_a_report(tmp_path):
    cfg = _cfg(tmp_path / "nowhere.jsonl", tmp_path / "test.jsonl")
    with pytest.raises(DataError, match="nowhere.jsonl: no such file$"):
        load_run_data(cfg, tmp_path / "run", say=print)
    assert not (tmp_path / "run" / "data_report.json").exists()


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_max_bad_fraction_must_be_a_fraction(value):
    from ray_s3ft.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.max_bad_fraction: must be in \[0, 1\]"):
        load_config(overrides=[f"data.max_bad_fraction={value}"])


def test_prompt_token_counter_counts_the_chat_formatted_prompt():
    from transformers import AutoTokenizer

    from ray_s3ft.model.paths import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("builtin"))
    prompt = "What is 12 + 30?"
    chat = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True
    )
    assert prompt_token_counter(tok)(prompt) == len(chat["input_ids"]) > len(tok(prompt).input_ids)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from ray_s3ft.model.paths import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("builtin"))


def test_a_gold_answer_over_the_response_budget_is_a_bad_row_counted_as_too_long(
    tmp_path, tokenizer
):
    from ray_s3ft.tasks.data_report import response_token_counter, rows_too_long

    # "7 + 5 = 12.\n#### 12": 7 / +/ 5/ =/ 1/2/./\n/##/##/ 1/2, 12 tokens, 13 with <|end|>;
    # "#### 7": ##/##/ 7, 3 tokens, 4 with <|end|>
    count = response_token_counter(tokenizer)
    assert (count("7 + 5 = 12.\n#### 12"), count("#### 7")) == (13, 4)
    long_gold = json.dumps({"question": "What is 7 + 5?", "answer": "7 + 5 = 12.\n#### 12"})
    long_prompt = json.dumps({"question": "seven " * 300, "answer": "#### 7"})
    train = _write(tmp_path / "train.jsonl", [_good(1), long_gold, _good(2), long_prompt])
    long_eval = json.dumps({"question": "What is 8 + 5?", "answer": "8 + 5 = 13.\n#### 13"})
    test = _write(tmp_path / "test.jsonl", [_good(3), long_eval])  # eval golds: not trained on
    cfg = _cfg(
        train, test, "data.max_response_tokens=12", "rollout.max_new_tokens=12",
        "data.max_bad_fraction=0.5",
    )  # fmt: skip
    said = []
    examples, eval_sets = load_run_data(
        cfg, tmp_path / "run", count_tokens=prompt_token_counter(tokenizer),
        count_response_tokens=count, say=said.append,
    )  # fmt: skip
    assert [ex.answer for ex in examples] == ["1", "2"] and len(eval_sets["task"]) == 2
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    entry = report["files"][train]
    assert (entry["rows"], entry["used"], entry["bad"]) == (4, 2, 2)
    assert entry["too_long"] == {"prompt": 1, "gold": 1}
    assert entry["problems"][0] == (
        f"{train}:2: gold answer is 13 tokens with the end-of-sequence token > "
        "data.max_response_tokens 12"
    )
    assert entry["problems"][1].startswith(f"{train}:4: prompt is ")
    assert report["files"][test]["too_long"] == {"prompt": 0, "gold": 0}
    assert (report["max_prompt_tokens"], report["max_response_tokens"]) == (256, 12)
    path = tmp_path / "run" / "data_report.json"
    assert said[0] == (
        f"data: {train}: 4 rows read, 2 used, 2 bad skipped "
        f"(1 prompt too long, 1 gold too long; see {path})"
    )
    assert rows_too_long(tmp_path / "run") == {"prompt": 1, "gold": 1}  # the run summary's
    # a budget of 13 takes the long gold answer whole
    cfg = _cfg(
        train, test, "data.max_response_tokens=13", "rollout.max_new_tokens=12",
        "data.max_bad_fraction=0.5",
    )  # fmt: skip
    examples, _ = load_run_data(
        cfg, tmp_path / "run13", count_tokens=prompt_token_counter(tokenizer),
        count_response_tokens=count, say=said.append,
    )  # fmt: skip
    assert [ex.answer for ex in examples] == ["1", "12", "2"]


def test_a_builtin_gold_answer_over_the_response_budget_stops_the_run(tmp_path, tokenizer):
    from ray_s3ft.tasks.data_report import response_token_counter

    cfg = load_config(
        overrides=["data.train_size=4", "data.max_response_tokens=8", "rollout.max_new_tokens=8"]
    )
    with pytest.raises(DataError, match=r"built-in task, example train-00000: gold answer is \d+ "
                       r"tokens with the end-of-sequence token > data.max_response_tokens 8"):  # fmt: skip
        load_run_data(
            cfg, tmp_path / "run", count_response_tokens=response_token_counter(tokenizer),
            with_eval=False, say=print,
        )  # fmt: skip
