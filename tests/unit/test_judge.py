"""The judge worker in-process: code runs side by side, each within its own limit, and every
verdict is handed out as soon as it is decided (a judge cut short keeps those)."""

from __future__ import annotations

import time

from ray_s3ft.config import JudgeConfig
from ray_s3ft.workers.group import ActorGroup
from ray_s3ft.workers.judge import JudgeWorker, judge_on
from ray_s3ft.workers.types import JudgeItem

TESTS = ("assert add(1, 2) == 3",)
OK = JudgeItem("add", "def add(a, b):\n    return a + b", "", "code", TESTS)
WRONG = JudgeItem("add", "def add(a, b):\n    return a - b", "", "code", TESTS)
LOOPS = JudgeItem("add", "def add(a, b):\n    while True: pass", "", "code", TESTS)
MATH = JudgeItem("2 + 2?", "The answer is 4.", "4", "math")


def test_looping_programs_cost_their_own_verdicts_and_run_beside_the_others():
    judge = JudgeWorker(JudgeConfig(verifier="math", sandbox_timeout_s=1.0), sandboxes=4)
    items = [LOOPS, OK] * 4 + [WRONG, MATH]
    started = time.perf_counter()
    verdicts = judge.judge(items)
    # 4 loops at 1 s each, 4 at a time: about 1 s; one after another it would be 4 s and more
    assert time.perf_counter() - started < 3.5
    assert [v.correct for v in verdicts] == [None, True] * 4 + [False, True]
    assert [v.reason for v in verdicts[:2]] == ["sandbox timeout", "pass"]
    assert verdicts[8].reason == "fail"


def test_verdicts_come_out_as_they_are_decided():
    judge = JudgeWorker(JudgeConfig(verifier="math", sandbox_timeout_s=1.0), sandboxes=2)
    batches = list(judge.verdicts([LOOPS, MATH, OK]))
    order = [i for batch in batches for i, _ in batch]
    # the math verdict first (decided while the sandboxes run), the looping program's last
    assert order[0] == 1 and order[-1] == 0 and sorted(order) == [0, 1, 2]
    by_index = {i: v.correct for batch in batches for i, v in batch}
    assert by_index == {0: None, 1: True, 2: True}


def test_judge_on_a_local_group_keeps_the_items_order():
    cfg = JudgeConfig(verifier="math", sandbox_timeout_s=1.0)
    group = ActorGroup(JudgeWorker, 2, name="judge", local=True, kwargs={"cfg": cfg})
    verdicts, late = judge_on(group, [OK, WRONG, MATH], timeout_s=5.0)
    assert [v.correct for v in verdicts] == [True, False, True] and late == 0
