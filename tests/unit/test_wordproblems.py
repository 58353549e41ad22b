"""The GSM8K-format word problems shipped for real-model runs (``ray_s3ft/tasks/wordproblems.py``)."""

import json
import re

from ray_s3ft.tasks import wordproblems
from ray_s3ft.tasks.data_report import DataReport
from ray_s3ft.tasks.loaders import load_examples


def test_the_shipped_files_are_what_the_generator_writes(tmp_path):
    for path in wordproblems.write(tmp_path):
        shipped = wordproblems.DATA_DIR / path.name
        assert shipped.read_text() == path.read_text(), f"regenerate {shipped}"


def test_gsm8k_format_with_right_calculator_annotations_and_disjoint_splits():
    train = [json.loads(x) for x in (wordproblems.DATA_DIR / "train.jsonl").open()]
    test = [json.loads(x) for x in (wordproblems.DATA_DIR / "test.jsonl").open()]
    assert (len(train), len(test)) == (256, 128)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    for row in train + test:
        calcs = re.findall(r"<<(\d+)([+-])(\d+)=(\d+)>>", row["answer"])
        assert 1 <= len(calcs) <= 2
        for a, op, b, c in calcs:
            assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c)
        assert row["answer"].endswith(f"#### {calcs[-1][3]}")
    report = DataReport(0.0)
    exs = load_examples("gsm8k", str(wordproblems.DATA_DIR / "test.jsonl"), "test", report=report)
    assert len(exs) == 128 and "<<" not in exs[0].gold  # annotations are not prose


def test_the_one_step_set_is_what_the_generator_writes_and_has_one_step(tmp_path):
    for path in wordproblems.write(tmp_path, spec=wordproblems.ONE_STEP):
        shipped = wordproblems.ONE_STEP_DIR / path.name
        assert shipped.read_text() == path.read_text(), f"regenerate {shipped}"
    train = [json.loads(x) for x in (wordproblems.ONE_STEP_DIR / "train.jsonl").open()]
    test = [json.loads(x) for x in (wordproblems.ONE_STEP_DIR / "test.jsonl").open()]
    assert (len(train), len(test)) == (256, 128)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert all(len(re.findall(r"<<", r["answer"])) == 1 for r in train + test)
