"""The built-in task's judge checks every written step, not just the final answer."""

import pytest

from ray_s3ft.tasks import builtin
from ray_s3ft.verifiers.steps import problem_steps, verify_steps

Q = "Mia has 12 apples. She buys 7 more. She loses 5. She finds 3 more. How many apples does Mia have now?"


def test_problem_steps_read_from_the_question():
    assert problem_steps(Q) == (12, [7, -5, 3])
    assert problem_steps("Which number is larger, 3 or 4?") is None


@pytest.mark.parametrize(
    "response, expected",
    [
        ("12 + 7 = 19. 19 - 5 = 14. 14 + 3 = 17. The answer is 17.", True),
        # right final answer, wrong step: the final-answer check alone would accept it
        ("12 + 7 = 20. 20 - 5 = 14. 14 + 3 = 17. The answer is 17.", False),
        ("12 + 7 = 19. 19 - 2 = 17. The answer is 17.", False),  # a step missing
        ("12 + 7 = 19. 19 + 5 = 14. 14 + 3 = 17. The answer is 17.", False),  # wrong operation
        ("12 + 7 = 19. 19 - 5 = 14. 14 + 3 = 17. The answer is 18.", False),
        ("Mia starts with 12 apples. After buying 7 and losing 5, she has 14. "
         "After finding 3, she has 17. #### 17", True),
        ("Mia starts with 12 apples. After buying 7 and losing 5, she has 15. "
         "After finding 3, she has 17. #### 17", False),
        ("Mia starts with 12 apples. After buying 7, she has 19. After losing 5 and finding 3, "
         "she has 17. #### 17", True),  # any grouping of the events, each total right
        ("Mia starts with 12 apples. After buying 7 and losing 5, she has 14. #### 17", False),
        ("The answer is 17.", True),  # no steps written: the final answer decides
        ("I do not know.", None),
    ],
)  # fmt: skip
def test_verify_steps_by_hand(response, expected):
    assert verify_steps(Q, response, "17") is expected


def test_gold_and_own_solutions_of_generated_problems_pass():
    for ex in builtin.task_split("train", 50):
        assert verify_steps(ex.prompt, ex.gold, ex.answer) is True, ex
    import random

    rng = random.Random(0)
    for _ in range(50):
        prob = builtin.sample_problem(rng)
        assert verify_steps(prob.question(), prob.own_solution(), str(prob.answer)) is True
        assert (
            verify_steps(
                prob.question(), prob.own_solution(answer=prob.answer + 1), str(prob.answer)
            )
            is False
        )
