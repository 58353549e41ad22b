"""Loading real data sets from local files: broken rows are skipped, counted and reported."""

import json
import logging

import pytest

from ray_s3ft.tasks.loaders import DataError, load_examples


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_gsm8k_rows_and_a_broken_one(tmp_path, caplog):
    src = _jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Tom has 2 + 3 apples?", "answer": "2+3=<<2+3=5>>5\n#### 5"},
        {"question": "No final line", "answer": "it is 4"},
        {"question": "Big", "answer": "#### 1,234"},
    ])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        exs = load_examples("gsm8k", src, "train")
    assert [e.answer for e in exs] == ["5", "1234"]
    assert exs[0].gold == "2+3=5\n#### 5"  # calculator annotations removed
    assert exs[0].verifier == "math"
    assert "skipped 1 broken row(s)" in caplog.text and "row 1" in caplog.text


def test_mbpp_keeps_tests(tmp_path):
    src = _jsonl(tmp_path / "mbpp.jsonl", [
        {"text": "Add.", "code": "def add(a, b): return a + b", "test_list": ["assert add(1, 2) == 3"]},
    ])  # fmt: skip
    (ex,) = load_examples("mbpp", src, "train")
    assert ex.verifier == "code" and ex.tests == ("assert add(1, 2) == 3",)
    assert "assert add(1, 2) == 3" in ex.prompt


def test_limit(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(10)]
    assert len(load_examples("gsm8k", _jsonl(tmp_path / "g.jsonl", rows), "train", limit=4)) == 4


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.jsonl: no such file"):
        load_examples("gsm8k", str(tmp_path / "missing.jsonl"), "train")
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no hashes"}])
    with pytest.raises(DataError, match=r"bad.jsonl: no usable gsm8k rows \(1 broken"):
        load_examples("gsm8k", bad, "train")
    with pytest.raises(DataError, match="no loader for task 'poetry'"):
        load_examples("poetry", bad, "train")
