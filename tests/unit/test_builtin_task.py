"""The built-in task family: deterministic, disjoint splits, two styles with the same content."""

import random
import re

import pytest

from ray_s3ft.prompts import build_paraphrase_prompt
from ray_s3ft.tasks import builtin
from ray_s3ft.tasks.builtin import Problem
from ray_s3ft.verifiers.llm_judge import parse_verdict


def test_problem_texts_by_hand():
    # 12 + 7 = 19, 19 - 5 = 14
    p = Problem("Mia", "she", "apples", 12, ((0, 1, 7), (1, -1, 5)))
    assert p.totals == [12, 19, 14]
    assert p.question() == (
        "Mia has 12 apples. She buys 7 more. She loses 5. How many apples does Mia have now?"
    )
    assert p.own_solution() == "12 + 7 = 19. 19 - 5 = 14. The answer is 14."
    assert p.gold_solution() == (
        "Mia starts with 12 apples. After buying 7, she has 19. After losing 5, she has 14. #### 14"
    )


def test_splits_are_deterministic_and_disjoint():
    a = builtin.task_split("train", 300, seed=3)
    b = builtin.task_split("train", 300, seed=3)
    assert a == b
    ev = builtin.task_split("eval", 200, seed=3)
    assert len({e.prompt for e in a}) == 300
    assert not {e.prompt for e in a} & {e.prompt for e in ev}
    assert builtin.task_split("train", 50, seed=4) != a[:50]


def test_gold_is_in_a_different_style_with_the_same_answer():
    for ex in builtin.task_split("train", 200, seed=0):
        assert ex.gold.endswith(f"#### {ex.answer}")
        assert "The answer is" not in ex.gold
        # every running total stays in [1, max_value]
        totals = [int(n) for n in re.findall(r"has (\d+)", ex.gold)]
        assert all(1 <= t <= builtin.ArithSpec().max_value for t in totals)


@pytest.mark.parametrize(
    "skill,prompt_re,check",
    [
        ("compare", r"Which number is larger, (\d+) or (\d+)\?",
         lambda m, a: a == f"The larger number is {max(int(m[1]), int(m[2]))}."),
        ("sort", r"smallest to largest: ([\d ]+)$",
         lambda m, a: a == " ".join(sorted(m[1].split()))),
        ("reverse", r"Reverse the list: (.+)$",
         lambda m, a: a == " ".join(reversed(m[1].split()))),
    ],
)  # fmt: skip
def test_heldout_answers_are_right(skill, prompt_re, check):
    exs = builtin.heldout_split(skill, 100, seed=0)
    assert len({e.prompt for e in exs}) == 100
    for ex in exs:
        m = re.search(prompt_re, ex.prompt)
        assert m and check(m, ex.answer), ex


def test_unknown_heldout_skill_names_the_allowed_ones():
    with pytest.raises(ValueError, match="compare, sort, reverse"):
        builtin.heldout_split("poetry", 3)


def test_pretraining_mixture_covers_every_kind_with_right_answers():
    rng = random.Random(0)
    pairs = [builtin.pretrain_pair(rng) for _ in range(3000)]
    judge = [(p, r) for p, r in pairs if p.startswith("Judge the candidate")]
    para = [(p, r) for p, r in pairs if "Reference answer:" in p]
    solve = [(p, r) for p, r in pairs if p.endswith("have now?")]
    narrate = [(p, r) for p, r in pairs if p.endswith(builtin.NARRATE_SUFFIX)]
    share = dict(builtin.PRETRAIN_MIX)
    # shares within a few points of PRETRAIN_MIX
    for kind, got in (
        ("solve", solve),
        ("paraphrase", para),
        ("judge", judge),
        ("narrate", narrate),
    ):
        assert abs(len(got) / 3000 - share[kind]) < 0.03, kind
    # solving is pretrained on short problems only; the gold style only under its own instruction
    assert max(r.count(" = ") for _, r in solve) == builtin.SOLVE_SPEC.max_steps
    assert max(r.count(" = ") for _, r in para) == builtin.ArithSpec().max_steps
    assert all(r.endswith(f"#### {r.split()[-1]}") and "The answer is" not in r for _, r in narrate)
    assert all("####" not in r for _, r in solve + para)
    # a judge pair's verdict agrees with comparing the two final answers
    for p, r in judge:
        ref = re.search(r"#### (\d+)\nCandidate", p)[1]
        cand = re.findall(r"(?:The answer is|####) (\d+)", p.split("Candidate:")[1])[-1]
        assert parse_verdict(r) is (ref == cand)
    # a paraphrase pair's prompt is the pipeline's paraphrase prompt
    q, ref = para[0][0].split("\nReference answer: ")
    assert para[0][0] == build_paraphrase_prompt(q, ref.split("\n")[0])
