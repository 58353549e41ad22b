"""Scoring answers against examples: a greedy answer by its verifier (``score_response``), a
multiple-choice question by the log-likelihood of each choice (``score_choices``), whole eval
sets with their verdicts (``score_sets``; each question's verdict kept by ``item_verdicts``). No engine lives here: the callers pass the greedy,
log-likelihood and judge functions of theirs (``ray-s3ft eval``, the run's evaluation on the
rollout engines, the tests)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ray_s3ft.config import CHOICE_TARGETS
from ray_s3ft.tasks.types import Example
from ray_s3ft.verifiers.registry import RULE_BASED, rule_verdict
from ray_s3ft.workers.types import Answer


@dataclass(frozen=True)
class SkillScore:
    accuracy: float  # correct / n
    correct: int
    n: int
    unparsed: int  # responses the verifier could not read (counted as wrong)
    unfinished: int = 0  # answers cut at eval.max_new_tokens (scored as they stand)


def score_response(example: Example, response: str, math_extract: str = "strict") -> bool | None:
    """True / False, or None when the verifier cannot read the response. ``code`` and ``llm``
    answers need a judge (the sandbox, an LLM judge): ``score_sets`` sends them to one.
    ``math_extract``: how a math answer is read (``verifiers.math``: strict or flexible)."""
    if example.verifier not in RULE_BASED:
        raise ValueError(
            f"example {example.id}: verifier {example.verifier!r} needs a judge (score_sets "
            f"with judge=...); score_response reads {', '.join(RULE_BASED)} answers"
        )
    return rule_verdict(example.verifier, example.prompt, response, example.answer, math_extract)


# -------------------------------------------------------------------------- scoring a set


def choice_continuations(example: Example, target: str = "text") -> list[str]:
    """The continuations a multiple-choice example is scored on, in letter order: each choice's
    text (``target="text"``, lm-eval's ARC / HellaSwag) or its letter (``"letter"``, lm-eval's
    MMLU, whose prompt also lists the lettered choices)."""
    from ray_s3ft.tasks.benchmarks import LETTERS

    if target not in CHOICE_TARGETS:
        raise ValueError(
            f"choice target must be one of {', '.join(CHOICE_TARGETS)}, not {target!r}"
        )
    choices = list(example.choices)
    if not choices:  # an Example made without its choices: the lettered lines of its prompt
        choices = [m.group(2) for m in re.finditer(r"^([A-J])\. (.*)$", example.prompt, re.M)]
        if target != "letter" or not choices:
            raise ValueError(f"example {example.id}: a choice example without its choices")
    if target == "cloze":  # the answer's words after "Answer:", as lm-eval's ARC and SciQ
        return [" " + c.strip() for c in choices]
    return list(LETTERS[: len(choices)]) if target == "letter" else choices


def choice_context(example: Example, target: str = "text") -> str:
    """What a choice's log-likelihood is conditioned on: the example's prompt (chat-formatted
    by the engine), or for ``cloze`` plain ``Question: ...\nAnswer:`` with no choices listed
    and no chat template, the format lm-evaluation-harness scores ARC, SciQ and OpenBookQA in
    (a small model that cannot yet follow "answer with the letter" still ranks the answers)."""
    if target != "cloze":
        return example.prompt
    from ray_s3ft.tasks.benchmarks import question_of

    return f"Question: {question_of(example)}\nAnswer:"


def score_choices(
    examples: list[Example], logliks: list[list[float]], target: str = "text"
) -> tuple[dict, list[dict]]:
    """Multiple choice by log-likelihood, as lm-evaluation-harness: ``acc`` is the share whose
    gold choice has the largest summed log-likelihood (``accuracy`` here), ``acc_norm`` the share
    whose gold choice has the largest log-likelihood per character of its continuation (equal
    to ``acc`` for letters), ``chance`` the mean of 1 / number of choices. Ties go to the first
    choice. Returns the set's scores and one record per example (the predicted letters)."""
    from ray_s3ft.tasks.benchmarks import LETTERS

    correct = correct_norm = 0
    chance, records = 0.0, []
    for ex, lls in zip(examples, logliks, strict=True):
        conts = choice_continuations(ex, target)
        if len(lls) != len(conts):
            raise ValueError(f"example {ex.id}: {len(lls)} log-likelihoods, {len(conts)} choices")
        norm = [ll / max(1, len(c)) for ll, c in zip(lls, conts, strict=True)]
        pred = LETTERS[max(range(len(lls)), key=lls.__getitem__)]
        pred_norm = LETTERS[max(range(len(norm)), key=norm.__getitem__)]
        gold = ex.answer.strip().upper()
        correct += pred == gold
        correct_norm += pred_norm == gold
        chance += 1 / len(conts)
        records.append(
            {"response": pred, "pred_norm": pred_norm, "loglik": lls, "correct": pred == gold}
        )
    n = len(examples)
    scores = {
        "accuracy": correct / max(1, n),
        "correct": correct,
        "n": n,
        "unparsed": 0,
        "acc_norm": correct_norm / max(1, n),
        "chance": chance / max(1, n),
    }
    return scores, records


def _judge_item(example: Example, response: str):
    from ray_s3ft.tasks import humaneval
    from ray_s3ft.workers.types import JudgeItem

    if humaneval.entry_point_of(example) is not None:
        response = humaneval.judge_response(example, response)
    return JudgeItem(example.prompt, response, example.answer, example.verifier, example.tests)


def score_sets(
    sets: dict[str, list[Example]],
    *,
    greedy: Callable[[list[str]], list[Answer]],
    loglik: Callable[[list[tuple[str, str]]], list[float]] | None = None,
    judge: Callable[[list], list] | None = None,
    choice_target: str = "text",
    math_extract: str = "flexible",
    cut: Callable[..., list[bool]] | None = None,
) -> tuple[dict[str, dict], list[dict]]:
    """Score every eval set: ``{set: {"accuracy", "correct", "n", "unparsed", ...}}`` and one
    record per example. One call of each kind for all sets together:

    - ``greedy(prompts) -> [Answer]`` for examples that are answered (math, exact, code,
      llm); math and exact answers are read here; a set counts its answers cut at the budget
      (``unfinished``), each record says whether its answer ended (``finished``);
    - ``loglik([(context, continuation)]) -> [log p]`` for ``choice`` examples, one pair per
      choice (``score_choices``; the set also gets ``acc_norm`` and ``chance``);
    - math answers are read by ``math_extract`` (``judge.math_extract``), and a math set also
      gets ``strict_accuracy`` and ``flexible_accuracy``, its accuracy under each extraction;
    - ``judge([JudgeItem]) -> [Verdict]`` for ``code`` (the sandbox: model-written code runs
      nowhere else; HumanEval responses as ``humaneval.program``) and ``llm`` (the LLM judge)
      examples, routed by each example's own verifier. An undecided verdict counts as wrong and
      as unparsed;
    - ``cut(prompts, raw=False) -> [bool]``: whether the engine cuts each prompt (or choice
      context) to its prompt budget, losing its start; each set then gets ``prompts_cut``, the
      number of its examples the model saw only the end of (``data.max_prompt_tokens``).
    """
    answered = [(name, i) for name, exs in sets.items() for i, ex in enumerate(exs)
                if ex.verifier != "choice"]  # fmt: skip
    answers = greedy([sets[n][i].prompt for n, i in answered]) if answered else []
    response = {key: a.text for key, a in zip(answered, answers, strict=True)}
    finished = {key: a.finished for key, a in zip(answered, answers, strict=True)}
    verdict: dict[tuple[str, int], bool | None] = {}
    reason: dict[tuple[str, int], str] = {}  # judged examples: the judge's word (sandbox status)
    judged = []
    by_mode: dict[str, dict[tuple[str, int], bool | None]] = {"strict": {}, "flexible": {}}
    for key, text in response.items():
        ex = sets[key[0]][key[1]]
        if ex.verifier in ("code", "llm"):
            judged.append(key)
        elif ex.verifier == "math":
            for mode in by_mode:
                by_mode[mode][key] = score_response(ex, text, mode)
            verdict[key] = by_mode[math_extract][key]
        else:
            verdict[key] = score_response(ex, text)
    if judged:
        if judge is None:
            raise ValueError("code and llm examples need a judge (the sandbox, an LLM judge)")
        items = [_judge_item(sets[n][i], response[(n, i)]) for n, i in judged]
        for key, v in zip(judged, judge(items), strict=True):
            verdict[key] = v.correct
            reason[key] = v.reason or {True: "pass", False: "fail"}.get(v.correct, "undecided")

    pairs, owners = [], []
    for name, exs in sets.items():
        for i, ex in enumerate(exs):
            if ex.verifier == "choice":
                conts = choice_continuations(ex, choice_target)
                pairs += [(choice_context(ex, choice_target), c) for c in conts]
                owners += [(name, i)] * len(conts)
    if pairs and loglik is None:
        raise ValueError("choice examples need loglik (scored by log-likelihood)")
    lls: dict[tuple[str, int], list[float]] = {}
    scored = (
        (loglik(pairs, raw=True) if choice_target == "cloze" else loglik(pairs)) if pairs else []
    )
    for key, ll in zip(owners, scored, strict=True):
        lls.setdefault(key, []).append(ll)

    scores, records = {}, []
    was_cut = _cut_prompts(sets, cut, choice_target) if cut is not None else None
    for name, exs in sets.items():
        choice = [i for i, ex in enumerate(exs) if ex.verifier == "choice"]
        if choice and len(choice) == len(exs):
            scores[name], recs = score_choices(exs, [lls[(name, i)] for i in choice], choice_target)
        elif choice:
            raise ValueError(f"eval set {name}: choice examples mixed with answered ones")
        else:
            vs = [verdict[(name, i)] for i in range(len(exs))]
            correct = sum(v is True for v in vs)
            unfinished = sum(not finished[(name, i)] for i in range(len(exs)))
            scores[name] = asdict(
                SkillScore(
                    correct / max(1, len(exs)), correct, len(exs), sum(v is None for v in vs),
                    unfinished,
                )
            )  # fmt: skip
            if exs and all(ex.verifier == "math" for ex in exs):
                for mode, got in by_mode.items():
                    hits = sum(got[(name, i)] is True for i in range(len(exs)))
                    scores[name][f"{mode}_accuracy"] = hits / len(exs)
            recs = [  # correct: None when undecided (counted as wrong)
                {
                    "response": response[(name, i)],
                    "correct": verdict[(name, i)],
                    "finished": finished[(name, i)],
                }
                | ({"judge": reason[(name, i)]} if (name, i) in reason else {})
                for i in range(len(exs))
            ]
        if was_cut is not None:
            scores[name]["prompts_cut"] = sum(was_cut[(name, i)] for i in range(len(exs)))
        records += [
            {"set": name, "id": ex.id, "h": prompt_hash(ex.prompt), "prompt": ex.prompt, **rec,
             "answer": ex.answer}
            for ex, rec in zip(exs, recs, strict=True)
        ]  # fmt: skip
    return scores, records


def _cut_prompts(
    sets: dict[str, list[Example]], cut: Callable[..., list[bool]], choice_target: str
) -> dict[tuple[str, int], bool]:
    """Whether the engine cut each example's prompt (a choice example: its context, plain text
    for ``cloze``), by (set, index)."""
    chat, plain = [], []  # (set, index) of the chat-formatted prompts, of the plain contexts
    for name, exs in sets.items():
        for i, ex in enumerate(exs):
            (plain if choice_target == "cloze" and ex.verifier == "choice" else chat).append(
                (name, i)
            )
    out: dict[tuple[str, int], bool] = {}
    if chat:
        flags = cut([sets[n][i].prompt for n, i in chat])
        out.update(zip(chat, flags, strict=True))
    if plain:
        flags = cut([choice_context(sets[n][i], "cloze") for n, i in plain], raw=True)
        out.update(zip(plain, flags, strict=True))
    return out


def prompts_cut_note(scores: dict) -> str | None:
    """A warning naming the eval sets whose prompts the engine cut (``prompts_cut``) and how
    many of each, or None when none was cut."""
    cut = [(k, v) for k, v in scores.items() if isinstance(v, dict) and v.get("prompts_cut")]
    if not cut:
        return None
    return "warning: prompts longer than data.max_prompt_tokens, seen without their start: " + (
        ", ".join(f"{k} {v['prompts_cut']} of {v['n']}" for k, v in cut)
    )


def prompt_hash(prompt: str) -> str:
    """A question's identity beside its id (ids are positions within a split): the first 12
    hex digits of the prompt's SHA-256."""
    import hashlib

    return hashlib.sha256(prompt.encode()).hexdigest()[:12]


def item_verdicts(records: list[dict]) -> list[dict]:
    """``score_sets``' records -> one small record per question: ``set``, ``id``, ``h`` (the
    prompt's hash) and ``correct`` (true, false, or null when undecided), what a paired
    comparison of two evaluations needs (``experiments.stats``)."""
    return [{k: r[k] for k in ("set", "id", "h", "correct")} for r in records]


def heldout_sets(scores: dict) -> dict[str, dict]:
    """The held-out accuracy sets of an evaluation's scores: every entry but ``task``, the mean
    and entries that are no accuracy (``drift``)."""
    return {
        k: v for k, v in scores.items() if k != "task" and isinstance(v, dict) and "accuracy" in v
    }
