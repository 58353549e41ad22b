"""Multiple-choice held-out sets from local files, and lm-evaluation-harness on a local task."""

import json
import logging

import pytest
import yaml

from ray_s3ft.cli import main
from ray_s3ft.config import ConfigError, load_config
from ray_s3ft.evaluation.scoring import score_response
from ray_s3ft.tasks.benchmarks import choice_prompt, load_choice_file
from ray_s3ft.tasks.loaders import load_eval_examples
from ray_s3ft.tasks.types import DataError, Example

QUESTIONS = [  # MMLU's shape; the answer is an index
    {"question": "Which is a color?", "choices": ["dog", "red", "cup"], "answer": 1},
    {"question": "What is 2 + 2?", "choices": ["3", "5", "4", "6"], "answer": 2},
    {"question": "Is 7 greater than 3?", "choices": ["yes", "no"], "answer": 0},
    {"question": "What is 5 - 1?", "choices": ["6", "4"], "answer": 1},
    {"question": "Which number is smallest?", "choices": ["9", "1", "5"], "answer": 1},
    {"question": "Is 2 greater than 8?", "choices": ["yes", "no"], "answer": 1},
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _ex(gold: str) -> Example:
    return Example(id="t-1", skill="t", prompt="?", gold=gold, answer=gold, verifier="choice")


# ------------------------------------------------------------------------------ the file


def test_broken_lines_are_skipped_counted_and_named(tmp_path, caplog):
    four = ["w", "x", "y", "z"]
    path = tmp_path / "mmlu_mini.jsonl"
    lines = [
        json.dumps({"question": "Q1?", "choices": ["a", "b"], "answer": 1}).encode(),
        b'{"question": "not json", ',  # 2
        b"\xff\xfe",  # 3
        json.dumps({"question": "Q4?", "choices": four, "answer": "c", "subject": "x"}).encode(),
        json.dumps({"choices": four, "answer": 0}).encode(),  # 5: no question
        b"",  # 6: blank, ignored
        json.dumps({"question": "Q7?", "choices": ["only"], "answer": 0}).encode(),
        json.dumps({"question": "Q8?", "choices": four, "answer": 7}).encode(),
        json.dumps({"question": "Q9?", "choices": four, "answer": "Z"}).encode(),
        json.dumps({"question": "Q10?", "choices": four, "answer": 1.0}).encode(),
        json.dumps({"question": "Q11?", "choices": list("0123456789"), "answer": "J"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="ray_s3ft.tasks.benchmarks"):
        exs = load_choice_file(str(path), 100)
    assert exs == [
        Example(
            id="mmlu_mini-00001",
            skill="mmlu_mini",
            prompt="Q1?\nA. a\nB. b\nAnswer with the letter of the correct choice.",
            gold="B",
            answer="B",
            verifier="choice",
            choices=("a", "b"),
        ),
        Example(
            id="mmlu_mini-00004",
            skill="mmlu_mini",
            prompt=choice_prompt("Q4?", four),
            gold="C",
            answer="C",
            verifier="choice",
            choices=tuple(four),
        ),
        Example(
            id="mmlu_mini-00011",
            skill="mmlu_mini",
            prompt=choice_prompt("Q11?", list("0123456789")),
            gold="J",
            answer="J",
            verifier="choice",
            choices=tuple("0123456789"),
        ),
    ]
    assert "J. 9\nAnswer with" in exs[2].prompt
    (record,) = [r for r in caplog.records if r.name == "ray_s3ft.tasks.benchmarks"]
    text = record.getMessage()
    assert "skipped 7 broken line(s)" in text and "and 2 more" in text
    for needle in (
        f"{path}:2: invalid JSON",
        f"{path}:3: not UTF-8",
        f"{path}:5: missing or empty question",
        f"{path}:7: choices must be a list of 2 to 10",
        f"{path}:8: answer 7 is out of range for 4 choices",
    ):
        assert needle in text
    # the first `size` usable rows; lines after them are not read
    assert [e.id for e in load_choice_file(path, 2)] == ["mmlu_mini-00001", "mmlu_mini-00004"]


@pytest.mark.parametrize(
    "row,reason",
    [
        ({"question": "q", "choices": ["a", "b"], "answer": "Z"}, "letter A..B; got 'Z'"),
        ({"question": "q", "choices": ["a", "b"], "answer": 1.0}, "got 1.0"),
        ({"question": "q", "choices": ["a", "b"], "answer": True}, "got True"),
        ({"question": "q", "choices": ["a", ""], "answer": 0}, "non-empty strings"),
        ({"question": "q", "choices": "ab", "answer": 0}, "choices must be a list"),
        ({"question": " ", "choices": ["a", "b"], "answer": 0}, "missing or empty question"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_a_file_with_no_usable_line_is_an_error_naming_it(tmp_path, row, reason):
    path = _jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError, match="no usable multiple-choice lines") as info:
        load_choice_file(path, 10)
    assert path in str(info.value) and reason in str(info.value)


def test_a_missing_file_is_an_error_naming_it(tmp_path):
    missing = str(tmp_path / "nowhere.jsonl")
    with pytest.raises(DataError, match="nowhere.jsonl: no such"):
        load_choice_file(missing, 10)


# ---------------------------------------------------------------------------- the verifier


@pytest.mark.parametrize(
    "response,gold,verdict",
    [
        ("B", "B", True),
        ("B. because it is", "B", True),
        ("(C)", "B", False),
        ("(C)", "C", True),
        ("The answer is D", "D", True),
        ("The answer is B because", "B", True),
        ("Answer: B", "A", False),
        ("answer: a", "A", True),
        ("", "A", None),
        ("I don't know", "I", None),
        ("A dog", "A", None),  # an article, not a choice
        ("the answer is a dog", "A", None),
        ("K", "A", None),
    ],
)
def test_choice_verifier(response, gold, verdict):
    assert score_response(_ex(gold), response) is verdict


# ---------------------------------------------------------------------- held-out sets, config


def test_mixed_heldout_list_and_set_names(tmp_path):
    path = _jsonl(tmp_path / "mmlu_mini.jsonl", QUESTIONS)
    cfg = load_config(
        overrides=[f"eval.heldout=[compare, {path}]", "eval.heldout_size=4", "eval.task_size=2"]
    )
    sets = load_eval_examples(cfg.data, cfg.eval)
    assert list(sets) == ["task", "compare", "mmlu_mini"]
    assert [len(v) for v in sets.values()] == [2, 4, 4]
    assert {e.verifier for e in sets["mmlu_mini"]} == {"choice"}

    (tmp_path / "b").mkdir()
    other = _jsonl(tmp_path / "b" / "mmlu_mini.jsonl", QUESTIONS)
    for heldout in ([path, other], [_jsonl(tmp_path / "compare.jsonl", QUESTIONS), "compare"]):
        cfg = load_config(overrides=[f"eval.heldout=[{', '.join(heldout)}]"])
        with pytest.raises(DataError, match="is taken"):
            load_eval_examples(cfg.data, cfg.eval)

    missing = str(tmp_path / "nowhere.jsonl")
    cfg = load_config(overrides=[f"eval.heldout=[compare, {missing}]"])
    with pytest.raises(DataError, match=missing):
        load_eval_examples(cfg.data, cfg.eval)


def test_unknown_heldout_entry_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["eval.heldout=[poetry]"])
    for text in ("eval.heldout", "compare, sort, reverse", ".jsonl", "'poetry'"):
        assert text in str(info.value)


def test_eval_with_a_missing_file_exits_2_naming_it(tmp_path, capsys):
    missing = str(tmp_path / "nowhere.jsonl")
    rc = main(["eval", f"eval.heldout=[{missing}]", f"eval.output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and missing in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_eval_end_to_end_with_a_choice_file(tmp_path):
    path = tmp_path / "mmlu_mini.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in QUESTIONS[:5]) + "{broken\n"
    )  # 5 usable rows of 6, fewer than eval.heldout_size
    out = tmp_path / "eval"
    rc = main([
        "eval", "model.path=builtin", "eval.backend=hf", "eval.task_size=8",
        "eval.heldout_size=8", f"eval.heldout=[compare, {path}]", f"eval.output_dir={out}",
    ])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    assert set(report["heldout"]) == {"compare", "mmlu_mini"}
    mc = report["heldout"]["mmlu_mini"]
    assert mc["n"] == 5 and 0 <= mc["correct"] <= 5 and mc["accuracy"] == mc["correct"] / 5
    assert report["heldout"]["compare"]["n"] == 8 and report["task"]["n"] == 8
    assert "lm_eval" not in report
    records = [json.loads(x) for x in (out / "eval_responses.jsonl").read_text().splitlines()]
    assert sum(r["set"] == "mmlu_mini" for r in records) == 5


# ---------------------------------------------------------------------------------- lm-eval


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """A 6-question lm-eval multiple-choice task, read from a local JSONL (no hub)."""
    pytest.importorskip("lm_eval")
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    data = _jsonl(root / "tiny_mc.jsonl", QUESTIONS)
    task = {
        "task": "ray_s3ft_tiny_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (root / "ray_s3ft_tiny_mc.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return str(root)


def test_run_lm_eval_on_a_local_task(tiny_task):
    from ray_s3ft.evaluation.lm_eval_suite import run_lm_eval
    from ray_s3ft.model.paths import resolve_model_path

    result = run_lm_eval(
        resolve_model_path("builtin"),
        ["ray_s3ft_tiny_mc"],
        include_path=tiny_task,
        limit=None,
        batch_size=4,
    )
    metrics = result["ray_s3ft_tiny_mc"]
    assert type(metrics["acc"]) is float and 0 <= metrics["acc"] <= 1
    assert metrics["n"] == len(QUESTIONS)
    assert json.loads(json.dumps(result)) == result


def test_unknown_lm_eval_task_names_the_key(tiny_task, tmp_path, capsys):
    from ray_s3ft.evaluation.lm_eval_suite import check_tasks

    with pytest.raises(DataError, match="eval.lm_eval_tasks") as info:
        check_tasks(["ray_s3ft_tiny_mcq"], tiny_task)
    assert "'ray_s3ft_tiny_mcq'" in str(info.value) and "ray_s3ft_tiny_mc?" in str(info.value)
    # `ray-s3ft eval` stops before decoding anything
    rc = main([
        "eval", "eval.heldout=[]", "eval.lm_eval_tasks=[ray_s3ft_tiny_mcq]",
        f"eval.lm_eval_include_path={tiny_task}", f"eval.output_dir={tmp_path}",
    ])  # fmt: skip
    assert rc == 2 and "eval.lm_eval_tasks" in capsys.readouterr().err


def test_missing_harness_says_how_to_install(monkeypatch):
    from ray_s3ft.evaluation import lm_eval_suite

    monkeypatch.setitem(__import__("sys").modules, "lm_eval.tasks", None)
    with pytest.raises(DataError, match=r"pip install 'ray-s3ft\[lm-eval\]'"):
        lm_eval_suite._task_manager.__wrapped__(None)


def test_eval_command_runs_lm_eval(tiny_task, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main([
        "eval", "eval.backend=hf", "eval.task_size=4", "eval.heldout=[]",
        "eval.lm_eval_tasks=[ray_s3ft_tiny_mc]", f"eval.lm_eval_include_path={tiny_task}",
        f"eval.output_dir={out}",
    ])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["lm_eval"]["ray_s3ft_tiny_mc"]["n"] == len(QUESTIONS)
    assert 0 <= report["lm_eval"]["ray_s3ft_tiny_mc"]["acc"] <= 1
    assert "lm-evaluation-harness" in capsys.readouterr().out
    # each document's verdict is kept: the task's accuracy is their mean
    records = [json.loads(x) for x in (out / "eval_responses.jsonl").read_text().splitlines()]
    docs = [r for r in records if r["set"] == "lm_eval/ray_s3ft_tiny_mc"]
    assert sorted(int(r["id"]) for r in docs) == list(range(len(QUESTIONS)))
    assert all(isinstance(r["correct"], bool) and len(r["h"]) == 12 for r in docs)
    acc = sum(r["correct"] for r in docs) / len(docs)
    assert acc == pytest.approx(report["lm_eval"]["ray_s3ft_tiny_mc"]["acc"])
    assert all(isinstance(r["correct"], bool) for r in records if r["set"] == "task")
