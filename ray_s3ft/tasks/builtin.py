"""The built-in task family: multi-step arithmetic word problems plus held-out skills.

No model or data set can be downloaded where the default run has to work, and S3FT only means
something when the base model already solves part of the task in its *own* style. So the project
makes both. A word problem has two solution styles:

  own  (the base model's):  "12 + 7 = 19. 19 - 5 = 14. The answer is 14."
  gold (the data set's):    "Mia starts with 12 apples. After buying 7, she has 19. ... #### 14"

The base model is pretrained (``ray_s3ft.model.pretrain``) on the own style, on rewriting a gold
reference into the own style (S3FT's paraphrase rung), on judging a candidate against a reference
(the LLM-judge path), and on held-out skills that fine-tuning never trains (``compare``,
``sort``, ``reverse``), which measure how much general ability fine-tuning costs.

Everything is a pure function of a seed; splits are disjoint by prompt text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ray_s3ft.prompts import build_paraphrase_prompt
from ray_s3ft.tasks.types import Example
from ray_s3ft.verifiers.llm_judge import VERDICT_CORRECT, VERDICT_INCORRECT, build_judge_prompt

TASK_SKILL = "arith"
HELDOUT_SKILLS = ("compare", "sort", "reverse")

_NAMES = (
    ("Mia", "she"), ("Tom", "he"), ("Ana", "she"), ("Leo", "he"), ("Zoe", "she"), ("Sam", "he"),
    ("Eva", "she"), ("Max", "he"), ("Ivy", "she"), ("Ben", "he"), ("Lily", "she"), ("Jack", "he"),
)  # fmt: skip
_ITEMS = (
    "apples", "pears", "coins", "books", "shells", "cards",
    "stamps", "marbles", "eggs", "pens", "cups", "rocks",
)  # fmt: skip
# (present tense in the question, gerund in the gold solution)
_GAIN = (("buys", "buying"), ("finds", "finding"), ("gets", "getting"), ("wins", "winning"))
_LOSS = (
    ("gives away", "giving away"),
    ("loses", "losing"),
    ("sells", "selling"),
    ("uses", "using"),
)
_WORDS = (
    "red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird",
    "star", "rain", "hat", "box", "cup", "key", "ship", "road", "lamp", "door",
)  # fmt: skip


@dataclass(frozen=True)
class ArithSpec:
    """Difficulty of the word problems; the defaults are the fine-tuning task's."""

    min_steps: int = 3
    max_steps: int = 6
    max_start: int = 20
    max_operand: int = 9
    max_value: int = 20  # running totals stay in [1, max_value]


# The base model is pretrained to *solve* only short problems, but to paraphrase, narrate and
# judge problems of every length of the task. So it solves the task's short problems on its own
# and mostly fails the long ones, while it can still rewrite a long gold solution in its own
# style: the situation S3FT's paraphrase rung is for, with something left for fine-tuning to
# teach (solving 5- and 6-step problems).
SOLVE_SPEC = ArithSpec(min_steps=2, max_steps=4)


@dataclass(frozen=True)
class Problem:
    name: str
    pronoun: str
    item: str
    start: int
    # (verb index, +1 or -1, operand) per step
    steps: tuple[tuple[int, int, int], ...]

    @property
    def totals(self) -> list[int]:
        totals = [self.start]
        for _, sign, operand in self.steps:
            totals.append(totals[-1] + sign * operand)
        return totals

    @property
    def answer(self) -> int:
        return self.totals[-1]

    def question(self) -> str:
        pron = self.pronoun.capitalize()
        parts = [f"{self.name} has {self.start} {self.item}."]
        for verb, sign, operand in self.steps:
            if sign > 0:
                parts.append(f"{pron} {_GAIN[verb][0]} {operand} more.")
            else:
                parts.append(f"{pron} {_LOSS[verb][0]} {operand}.")
        parts.append(f"How many {self.item} does {self.name} have now?")
        return " ".join(parts)

    def own_solution(self, answer: int | None = None) -> str:
        totals = self.totals
        lines = []
        for i, (_, sign, operand) in enumerate(self.steps):
            op = "+" if sign > 0 else "-"
            lines.append(f"{totals[i]} {op} {operand} = {totals[i + 1]}.")
        final = self.answer if answer is None else answer
        return " ".join(lines) + f" The answer is {final}."

    def gold_solution(self) -> str:
        totals = self.totals
        parts = [f"{self.name} starts with {self.start} {self.item}."]
        for i, (verb, sign, operand) in enumerate(self.steps):
            gerund = _GAIN[verb][1] if sign > 0 else _LOSS[verb][1]
            parts.append(f"After {gerund} {operand}, {self.pronoun} has {totals[i + 1]}.")
        return " ".join(parts) + f" #### {self.answer}"


def sample_problem(rng: random.Random, spec: ArithSpec = ArithSpec()) -> Problem:
    name, pronoun = rng.choice(_NAMES)
    start = rng.randint(2, spec.max_start)
    total, steps = start, []
    for _ in range(rng.randint(spec.min_steps, spec.max_steps)):
        can_add = total + 1 <= spec.max_value
        can_sub = total > 1
        if can_add and (not can_sub or rng.random() < 0.5):
            operand = rng.randint(1, min(spec.max_operand, spec.max_value - total))
            steps.append((rng.randrange(len(_GAIN)), 1, operand))
        else:
            operand = rng.randint(1, min(spec.max_operand, total - 1))
            steps.append((rng.randrange(len(_LOSS)), -1, operand))
        total += steps[-1][1] * operand
    return Problem(name, pronoun, rng.choice(_ITEMS), start, tuple(steps))


def arith_example(problem: Problem, id: str) -> Example:
    return Example(
        id=id,
        skill=TASK_SKILL,
        prompt=problem.question(),
        gold=problem.gold_solution(),
        answer=str(problem.answer),
        verifier="math",
    )


# ---- held-out skills: (prompt, the base model's answer) ------------------------------------


def _compare(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(10, 100), 2)
    return f"Which number is larger, {a} or {b}?", f"The larger number is {max(a, b)}."


def _sort(rng: random.Random) -> tuple[str, str]:
    digits = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
    shown = " ".join(map(str, digits))
    return f"Sort these digits from smallest to largest: {shown}", " ".join(
        map(str, sorted(digits))
    )


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 4))]
    return f"Reverse the list: {' '.join(words)}", " ".join(reversed(words))


_HELDOUT = {"compare": _compare, "sort": _sort, "reverse": _reverse}


def heldout_example(skill: str, rng: random.Random, id: str) -> Example:
    prompt, answer = _HELDOUT[skill](rng)
    return Example(id=id, skill=skill, prompt=prompt, gold=answer, answer=answer, verifier="exact")


# ---- splits ---------------------------------------------------------------------------------


def _unique(make, size: int, rng: random.Random, exclude: set[str]) -> list[Example]:
    out: list[Example] = []
    seen = set(exclude)
    for _ in range(size * 50):  # the problem space is large; this bound is never reached
        if len(out) == size:
            break
        ex = make(rng, len(out))
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            out.append(ex)
    if len(out) < size:
        raise ValueError(f"could not draw {size} distinct examples")
    return out


def task_split(
    split: str, size: int, seed: int = 0, spec: ArithSpec = ArithSpec()
) -> list[Example]:
    """The fine-tuning task. ``eval`` never shares a prompt with ``train`` of the same seed
    (as long as ``train`` is no larger than 10,000 examples)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    exclude: set[str] = set()
    if split == "eval":
        exclude = {ex.prompt for ex in task_split("train", 10_000, seed, spec)}
    rng = random.Random(f"builtin:{split}:{seed}")
    return _unique(
        lambda r, i: arith_example(sample_problem(r, spec), f"{split}-{i:05d}"), size, rng, exclude
    )


def heldout_split(skill: str, size: int, seed: int = 0) -> list[Example]:
    if skill not in _HELDOUT:
        raise ValueError(f"unknown held-out skill {skill!r}; allowed: {', '.join(HELDOUT_SKILLS)}")
    rng = random.Random(f"heldout:{skill}:{seed}")
    return _unique(lambda r, i: heldout_example(skill, r, f"{skill}-{i:05d}"), size, rng, set())


# ---- the base model's pretraining mixture ---------------------------------------------------

# Shares of each kind of (prompt, response) pair in the pretraining stream. Two choices make the
# built-in setting behave like the papers' (a base model that knows many styles and can rewrite a
# reference in its own words):
# - "narrate" teaches the gold *style* under its own instruction (NARRATE_SUFFIX), never as the
#   answer to a plain question: the base model answers a plain question in its own style, but the
#   gold style is a known one, so SFT on gold can learn it within a fine-tuning budget.
# - "paraphrase" is a large share: rewriting a reference is copying numbers into the own format,
#   and S3FT's middle rung needs the base model to do that reliably.
PRETRAIN_MIX = (
    ("solve", 0.34),  # word problem -> own-style solution
    ("paraphrase", 0.28),  # word problem + gold reference -> own-style solution
    ("narrate", 0.08),  # word problem + NARRATE_SUFFIX -> gold-style solution
    ("judge", 0.06),  # question + reference + candidate -> verdict (long prompt, 4-token answer)
    ("compare", 0.10),
    ("sort", 0.07),
    ("reverse", 0.07),
)
NARRATE_SUFFIX = "Tell it as a story, step by step."


def _wrong_answer(rng: random.Random, answer: int) -> int:
    delta = rng.choice([-1, 1]) * rng.randint(1, 10)
    return answer + delta if answer + delta >= 0 else answer + abs(delta)


def pretrain_pair(rng: random.Random, spec: ArithSpec = ArithSpec()) -> tuple[str, str]:
    """One (user message, assistant response) pair of the base model's training stream."""
    kind = rng.choices([k for k, _ in PRETRAIN_MIX], weights=[w for _, w in PRETRAIN_MIX])[0]
    if kind in _HELDOUT:
        return _HELDOUT[kind](rng)
    problem = sample_problem(rng, SOLVE_SPEC if kind == "solve" else spec)
    if kind == "solve":
        return problem.question(), problem.own_solution()
    if kind == "paraphrase":
        prompt = build_paraphrase_prompt(problem.question(), problem.gold_solution())
        return prompt, problem.own_solution()
    if kind == "narrate":
        return f"{problem.question()}\n{NARRATE_SUFFIX}", problem.gold_solution()
    # judge: a candidate in either style whose final answer is right half of the time
    correct = rng.random() < 0.5
    final = problem.answer if correct else _wrong_answer(rng, problem.answer)
    candidate = (
        problem.own_solution(answer=final)
        if rng.random() < 0.7
        else problem.gold_solution().rsplit("####", 1)[0] + f"#### {final}"
    )
    prompt = build_judge_prompt(problem.question(), problem.gold_solution(), candidate)
    return prompt, VERDICT_CORRECT if correct else VERDICT_INCORRECT
