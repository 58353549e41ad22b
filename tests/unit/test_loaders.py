"""Loading real data sets from local files: each broken row is skipped and named by file:line."""

import json
import logging

import pytest

from ray_s3ft.tasks.data_report import DataReport
from ray_s3ft.tasks.loaders import load_examples
from ray_s3ft.tasks.types import DataError

GOOD = {"question": "Tom has 2 + 3 apples?", "answer": "2+3=<<2+3=5>>5\n#### 5"}
BARE = "{question}"  # the converter's prompt as is, without the task's template


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _good(i):
    return {"question": f"q{i}", "answer": f"#### {i}"}


def test_gsm8k_rows_and_a_broken_one(tmp_path, caplog):
    src = _jsonl(tmp_path / "gsm8k.jsonl", [
        GOOD,
        {"question": "No final line", "answer": "it is 4"},
        {"question": "Big", "answer": "#### 1,234"},
    ])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        exs = load_examples("gsm8k", src, "train")
    assert [e.answer for e in exs] == ["5", "1234"]
    assert [e.id for e in exs] == ["train-00000", "train-00002"]
    assert exs[0].gold == "2+3=5\n#### 5"  # calculator annotations removed
    assert exs[0].verifier == "math"
    assert "skipped 1 bad row(s) of 3" in caplog.text
    assert f"{src}:2: 'answer' has no '#### N' final line" in caplog.text


def test_every_kind_of_bad_line_is_named_by_its_line(tmp_path):
    lines = [
        json.dumps(GOOD).encode(),  # 1
        b'{"question": "cut off", ',  # 2
        json.dumps(_good(3)).encode(),  # 3
        json.dumps({"answer": "#### 1"}).encode(),  # 4
        json.dumps({"question": "  ", "answer": "#### 1"}).encode(),  # 5
        json.dumps({"question": ["a", "list"], "answer": "#### 1"}).encode(),  # 6
        json.dumps({"question": "q", "answer": None}).encode(),  # 7
        b"   ",  # 8: blank, neither a row nor a problem
        json.dumps({"question": "word " * 11, "answer": "#### 1"}).encode(),  # 9
        b'{"question": "caf\xe9?", "answer": "#### 1"}',  # 10: Latin-1, not UTF-8
        b"[1, 2]",  # 11
        json.dumps({"question": 5, "answer": "#### 1"}).encode(),  # 12
        json.dumps({"question": "word " * 10, "answer": "#### 13"}).encode(),  # 13
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = DataReport(1.0, max_prompt_tokens=10, count_tokens=lambda p: len(p.split()))
    exs = load_examples("gsm8k", str(path), "train", report=report, template=BARE)
    assert [(e.id, e.answer) for e in exs] == [
        ("train-00000", "5"),
        ("train-00002", "3"),
        ("train-00011", "13"),  # the blank line 8 is not a row
    ]
    file = report.files[str(path)]
    assert (file.rows, file.used, file.bad, file.complete) == (12, 3, 9, True)
    assert file.problems == [
        f"{path}:{n}: {why}"
        for n, why in [
            (2, "invalid JSON: Expecting property name enclosed in double quotes (col 25)"),
            (4, "missing field 'question'"),
            (5, "empty field 'question'"),
            (6, "'question' must be a string, got a list"),
            (7, "'answer' is null"),
            (9, "prompt is 11 tokens > data.max_prompt_tokens 10"),
            (10, "not UTF-8 (byte 0xe9 at col 18)"),
            (11, "not a JSON object (got a list)"),
            (12, "'question' must be a string, got a number"),
        ]
    ]


def test_mbpp_keeps_tests(tmp_path):
    src = _jsonl(tmp_path / "mbpp.jsonl", [
        {"text": "Add.", "code": "def add(a, b): return a + b", "test_list": ["assert add(1, 2) == 3"]},
        {"text": "Sub.", "code": "def sub(a, b): return a - b", "test_list": "assert sub(2, 1) == 1"},
        {"text": "Mul.", "code": "def mul(a, b): return a * b", "test_list": []},
    ])  # fmt: skip
    report = DataReport()
    (ex,) = load_examples("mbpp", src, "train", report=report, template=BARE)
    assert ex.verifier == "code" and ex.tests == ("assert add(1, 2) == 3",)
    assert "assert add(1, 2) == 3" in ex.prompt
    assert report.files[src].problems == [
        f"{src}:2: 'test_list' must be a list of strings, got str",
        f"{src}:3: empty field 'test_list'",
    ]


def test_nq_answers_may_be_numbers_or_lists(tmp_path):
    src = _jsonl(tmp_path / "nq.jsonl", [
        {"question": "When did it end?", "answer": 1945},
        {"question": "Who?", "answers": ["Ada", " ", "Lovelace"], "context": "A passage."},
        {"question": "Which?", "answer": [True]},
        {"question": "What?", "answers": []},
        {"question": "Where?"},
    ])  # fmt: skip
    report = DataReport()
    a, b = load_examples("nq", src, "train", report=report, template=BARE)
    assert (a.gold, a.answer, a.prompt) == ("1945", "1945", "When did it end?")
    assert (b.gold, b.answer) == ("Ada", "Ada | Lovelace")
    assert b.prompt == "A passage.\n\nQuestion: Who?"
    assert report.files[src].problems == [
        f"{src}:3: 'answer' must be a string, a number or a list of them",
        f"{src}:4: empty field 'answers'",
        f"{src}:5: missing field 'answer'",
    ]


def test_limit_stops_reading(tmp_path):
    src = _jsonl(tmp_path / "g.jsonl", [_good(i) for i in range(10)])
    report = DataReport()
    assert len(load_examples("gsm8k", src, "train", limit=4, report=report)) == 4
    assert (report.files[src].rows, report.files[src].complete) == (4, False)


@pytest.mark.parametrize("rows,bad,fails", [(20, 1, False), (19, 1, True)])
def test_more_than_max_bad_fraction_is_an_error(tmp_path, rows, bad, fails):
    # 1/20 = 0.05 is not more than 0.05; 1/19 = 0.0526 is
    src = _jsonl(
        tmp_path / "g.jsonl", [{"question": "q"}] * bad + [_good(i) for i in range(rows - bad)]
    )
    report = DataReport(max_bad_fraction=0.05)
    if not fails:
        assert len(load_examples("gsm8k", src, "train", report=report)) == rows - bad
        assert report.files[src].bad_fraction == 0.05
        return
    with pytest.raises(DataError) as info:
        load_examples("gsm8k", src, "train", report=report)
    assert str(info.value) == (
        f"{src}: 1 of 19 rows are bad (5.26% > data.max_bad_fraction 0.05): "
        f"{src}:1: missing field 'answer'"
    )


def test_max_bad_fraction_0_allows_no_bad_row(tmp_path):
    src = _jsonl(tmp_path / "g.jsonl", [{"question": "q"}] + [_good(i) for i in range(19)])
    with pytest.raises(
        DataError, match=r"1 of 20 rows are bad \(5.00% > data.max_bad_fraction 0\)"
    ):
        load_examples("gsm8k", src, "train", report=DataReport(0.0))


def test_a_larger_share_quotes_three_problems(tmp_path):
    src = _jsonl(tmp_path / "g.jsonl", [{"question": f"q{i}"} for i in range(5)] + [_good(1)])
    with pytest.raises(DataError) as info:
        load_examples("gsm8k", src, "train", report=DataReport(0.5))
    assert str(info.value) == (
        f"{src}: 5 of 6 rows are bad (83.33% > data.max_bad_fraction 0.5): "
        + "; ".join(f"{src}:{n}: missing field 'answer'" for n in (1, 2, 3))
        + "; and 2 more"
    )


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.jsonl", b""),
        ("blank.jsonl", b"\n  \n\n"),
        ("empty.json", b"[]"),
        ("data.json", b'{"data": []}'),
        ("header.csv", b"question,answer\n"),
    ],
)
def test_an_empty_file_is_an_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"^{path}: empty"):
        load_examples("gsm8k", str(path), "train")


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        load_examples("gsm8k", str(tmp_path / "missing.jsonl"), "train")
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no hashes"}])
    with pytest.raises(DataError, match=r"bad.jsonl: no usable gsm8k rows \(1 bad: .*bad.jsonl:1"):
        load_examples("gsm8k", bad, "train")
    with pytest.raises(DataError, match="no loader for task 'poetry'"):
        load_examples("poetry", bad, "train")


# ------------------------------------------------------------------------- other formats


def test_json_document_rows_are_named_by_the_line_their_element_starts_on(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(
        '{"version": 2, "data": [\n'  # 1
        '  {"question": "a", "answer": "#### 1"},\n'  # 2
        "\n"  # 3
        '  {"question": "b"},\n'  # 4
        "  7,\n"  # 5
        "  {\n"  # 6
        '    "question": "c", "answer": null\n'  # 7
        "  }\n"  # 8
        '], "data_note": {"data": 1}}\n'  # 9: other keys are not rows
    )
    report = DataReport()
    assert len(load_examples("gsm8k", str(path), "train", report=report)) == 1
    assert report.files[str(path)].problems == [
        f"{path}:4: missing field 'answer'",
        f"{path}:5: not a JSON object (got a number)",
        f"{path}:6: 'answer' is null",
    ]
    path.write_text(json.dumps([{"question": "b"}, GOOD], indent=2))  # 1 "[", 2 "{", 7 "{"
    report = DataReport()
    assert len(load_examples("gsm8k", str(path), "train", report=report)) == 1
    assert report.files[str(path)].problems == [f"{path}:2: missing field 'answer'"]


def test_json_file_that_is_not_json_is_one_error_naming_the_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"question": "a", "answer": "#### 1"},\n  {"question": \n]\n')
    with pytest.raises(DataError, match=rf"^{path}:4: invalid JSON: Expecting value \(col 1\)"):
        load_examples("gsm8k", str(path), "train")


def test_json_lines_under_a_json_name_are_read_line_by_line(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text(json.dumps(GOOD) + "\n{oops\n" + json.dumps(_good(2)) + "\n")
    report = DataReport()
    assert len(load_examples("gsm8k", str(path), "train", report=report)) == 2
    assert report.files[str(path)].problems == [
        f"{path}:2: invalid JSON: Expecting property name enclosed in double quotes (col 2)"
    ]


def test_csv_rows_are_named_by_the_line_they_start_on(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(
        b"question,answer\n"  # 1
        b'"Two\nlines?","#### 2"\n'  # 2-3
        b"short row\n"  # 4
        b"\n"  # 5: blank
        b"caf\xe9?,#### 1\n"  # 6
        b"ok?,#### 7\n"  # 7
        b",#### 8\n"  # 8
    )
    report = DataReport()
    exs = load_examples("gsm8k", str(path), "train", report=report, template=BARE)
    assert [(e.prompt, e.answer) for e in exs] == [("Two\nlines?", "2"), ("ok?", "7")]
    assert report.files[str(path)].problems == [
        f"{path}:4: 1 fields, the header has 2",
        f"{path}:6: not UTF-8 (byte 0xe9 in column 'question')",
        f"{path}:8: empty field 'question'",
    ]


def test_parquet_rows_are_numbered_from_1(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    table = pa.table({"question": ["a", "b", None, "d"], "answer": ["#### 1", None, "#### 3", "x"]})
    pq.write_table(table, path)
    report = DataReport()
    (ex,) = load_examples("gsm8k", str(path), "train", report=report)
    assert ex.id == "train-00000"
    assert report.files[str(path)].problems == [
        f"{path}:2: 'answer' is null",
        f"{path}:3: 'question' is null",
        f"{path}:4: 'answer' has no '#### N' final line",
    ]
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet: not readable as parquet"):
        load_examples("gsm8k", str(tmp_path / "junk.parquet"), "train")


def test_saved_dataset_rows_are_named_by_split_and_row(tmp_path):
    import datasets

    path = tmp_path / "saved"
    ds = datasets.Dataset.from_list([GOOD, {"question": "q", "answer": None}])
    datasets.DatasetDict({"test": ds}).save_to_disk(str(path))
    report = DataReport()
    assert len(load_examples("gsm8k", str(path), "test", report=report)) == 1
    assert report.files[f"{path}[test]"].problems == [f"{path}[test]:2: 'answer' is null"]
    with pytest.raises(DataError, match=r"saved: no split 'train'; it has test"):
        load_examples("gsm8k", str(path), "train")


def test_each_task_prompt_template_wraps_the_question_and_an_override_replaces_it(tmp_path):
    from ray_s3ft.config import load_config
    from ray_s3ft.prompts import TASK_PROMPTS
    from ray_s3ft.tasks.loaders import load_eval_examples, load_train_examples

    src = _jsonl(tmp_path / "g.jsonl", [GOOD])
    (ex,) = load_examples("gsm8k", src, "train")
    assert ex.prompt == TASK_PROMPTS["gsm8k"].format(question=GOOD["question"])
    assert ex.prompt.endswith("\n\nTom has 2 + 3 apples?") and '"The answer is N."' in ex.prompt
    # the same template at training and at evaluation; an override for both
    cfg = load_config(overrides=[
        "data.task=gsm8k", f"data.train_path={src}", f"data.eval_path={src}", "eval.heldout=[]",
        r'data.prompt_template="Q: {question}\nA step at a time."',  # YAML reads the \n
    ])  # fmt: skip
    (train,) = load_train_examples(cfg.data)
    (test,) = load_eval_examples(cfg.data, cfg.eval)["task"]
    assert train.prompt == test.prompt == "Q: Tom has 2 + 3 apples?\nA step at a time."
    # the built-in task keeps its bare question: the built-in model was pretrained on it
    builtin = load_train_examples(load_config().data)
    assert "step by step" not in builtin[0].prompt and builtin[0].prompt.endswith("?")


def test_prompt_length_is_checked_after_the_template(tmp_path):
    src = _jsonl(tmp_path / "g.jsonl", [GOOD])
    words = len(GOOD["question"].split())  # 6
    ok = DataReport(1.0, max_prompt_tokens=words, count_tokens=lambda p: len(p.split()))
    assert len(load_examples("gsm8k", src, "train", report=ok, template=BARE)) == 1
    with pytest.raises(DataError, match="prompt is 11 tokens > data.max_prompt_tokens 6"):
        load_examples("gsm8k", src, "train", report=DataReport(1.0, words, ok.count_tokens),
                      template="one two three four five {question}")  # fmt: skip
