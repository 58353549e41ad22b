"""``ray-s3ft eval``: task accuracy and held-out accuracy of a model, the numbers S3FT is about.

The S3FT paper's argument is three numbers: task accuracy, the drop on held-out abilities relative
to the base model, and the target source fractions. This module measures the first two for any
model directory (the base model, or a checkpoint of a run) with greedy decoding.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ray_s3ft.config import CHOICE_TARGETS
from ray_s3ft.tasks.types import Example
from ray_s3ft.verifiers.registry import RULE_BASED, rule_verdict


@dataclass(frozen=True)
class SkillScore:
    accuracy: float  # correct / n
    correct: int
    n: int
    unparsed: int  # responses the verifier could not read (counted as wrong)


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


def score_set(examples: list[Example], responses: list[str]) -> SkillScore:
    verdicts = [score_response(ex, r) for ex, r in zip(examples, responses, strict=True)]
    correct = sum(v is True for v in verdicts)
    return SkillScore(
        accuracy=correct / max(1, len(examples)),
        correct=correct,
        n=len(examples),
        unparsed=sum(v is None for v in verdicts),
    )


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
        records.append({"response": pred, "pred_norm": pred_norm, "loglik": lls})
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
    greedy: Callable[[list[str]], list[str]],
    loglik: Callable[[list[tuple[str, str]]], list[float]] | None = None,
    judge: Callable[[list], list] | None = None,
    choice_target: str = "text",
    math_extract: str = "flexible",
) -> tuple[dict[str, dict], list[dict]]:
    """Score every eval set: ``{set: {"accuracy", "correct", "n", "unparsed", ...}}`` and one
    record per example. One call of each kind for all sets together:

    - ``greedy(prompts) -> texts`` for examples that are answered (math, exact, code, llm);
      math and exact answers are read here;
    - ``loglik([(context, continuation)]) -> [log p]`` for ``choice`` examples, one pair per
      choice (``score_choices``; the set also gets ``acc_norm`` and ``chance``);
    - math answers are read by ``math_extract`` (``judge.math_extract``), and a math set also
      gets ``strict_accuracy`` and ``flexible_accuracy``, its accuracy under each extraction;
    - ``judge([JudgeItem]) -> [Verdict]`` for ``code`` (the sandbox: model-written code runs
      nowhere else; HumanEval responses as ``humaneval.program``) and ``llm`` (the LLM judge)
      examples, routed by each example's own verifier. An undecided verdict counts as wrong and
      as unparsed.
    """
    answered = [(name, i) for name, exs in sets.items() for i, ex in enumerate(exs)
                if ex.verifier != "choice"]  # fmt: skip
    texts = greedy([sets[n][i].prompt for n, i in answered]) if answered else []
    response = dict(zip(answered, texts, strict=True))
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
    for name, exs in sets.items():
        choice = [i for i, ex in enumerate(exs) if ex.verifier == "choice"]
        if choice and len(choice) == len(exs):
            scores[name], recs = score_choices(exs, [lls[(name, i)] for i in choice], choice_target)
        elif choice:
            raise ValueError(f"eval set {name}: choice examples mixed with answered ones")
        else:
            vs = [verdict[(name, i)] for i in range(len(exs))]
            correct = sum(v is True for v in vs)
            scores[name] = asdict(
                SkillScore(
                    correct / max(1, len(exs)), correct, len(exs), sum(v is None for v in vs)
                )
            )
            if exs and all(ex.verifier == "math" for ex in exs):
                for mode, got in by_mode.items():
                    hits = sum(got[(name, i)] is True for i in range(len(exs)))
                    scores[name][f"{mode}_accuracy"] = hits / len(exs)
            recs = [
                {"response": response[(name, i)]}
                | ({"judge": reason[(name, i)]} if (name, i) in reason else {})
                for i in range(len(exs))
            ]
        records += [
            {"set": name, "id": ex.id, "prompt": ex.prompt, **rec, "answer": ex.answer}
            for ex, rec in zip(exs, recs, strict=True)
        ]
    return scores, records


def heldout_sets(scores: dict) -> dict[str, dict]:
    """The held-out accuracy sets of an evaluation's scores: every entry but ``task``, the mean
    and entries that are no accuracy (``drift``)."""
    return {
        k: v for k, v in scores.items() if k != "task" and isinstance(v, dict) and "accuracy" in v
    }


def evaluate(cfg, model_path: str | None = None, progress=print) -> dict:
    """Score every eval set with ``cfg.eval.backend`` (``score_sets``: greedy answers, choices
    by log-likelihood, code in the sandbox, llm answers by the LLM judge; with ``eval.drift``
    the drift from the base model). Returns the report."""
    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.tasks.loaders import load_eval_examples

    path = resolve_model_path(model_path or cfg.model.path)
    sets = load_eval_examples(cfg.data, cfg.eval)  # {"task": ..., <held-out set>: ...}
    lm_tasks = list(cfg.eval.lm_eval_tasks)
    if lm_tasks:  # a missing harness or an unknown task fails now, not after decoding
        from ray_s3ft.lm_eval_suite import check_tasks

        check_tasks(lm_tasks, cfg.eval.lm_eval_include_path)
    answered = sum(ex.verifier != "choice" for exs in sets.values() for ex in exs)
    progress(
        f"eval: {sum(map(len, sets.values()))} examples "
        f"({', '.join(f'{k} {len(v)}' for k, v in sets.items())}; {answered} answered, the rest "
        f"multiple choice by log-likelihood) with {cfg.eval.backend} on {path}"
    )
    engines = _EvalEngines(cfg, path)
    started = time.perf_counter()
    scores, records = score_sets(
        sets,
        greedy=engines.greedy,
        loglik=lambda pairs, raw=False: engines.worker(path).loglikelihoods(pairs, raw),
        judge=engines.judge,
        choice_target=cfg.eval.choice_target,
        math_extract=cfg.judge.math_extract,
    )
    report: dict = {
        "model": path,
        "backend": cfg.eval.backend,
        "generate_s": round(engines.generate_s, 2),
        "score_s": round(time.perf_counter() - started, 2),
    }
    report["task"] = scores.pop("task")
    report["heldout"] = scores
    if scores:
        report["heldout_mean"] = sum(v["accuracy"] for v in scores.values()) / len(scores)
    if cfg.eval.drift:
        report["drift"] = engines.drift(path)
    if lm_tasks:
        import torch

        from ray_s3ft.lm_eval_suite import run_lm_eval

        progress(f"lm-eval: {', '.join(lm_tasks)} on {path}")
        started = time.perf_counter()
        report["lm_eval"] = run_lm_eval(
            path,
            lm_tasks,
            cfg.eval.lm_eval_include_path,
            cfg.eval.lm_eval_limit,
            cfg.eval.batch_size,
            device="cuda" if torch.cuda.is_available() else "cpu",
            dtype=cfg.model.dtype,
        )
        report["lm_eval_s"] = round(time.perf_counter() - started, 2)
    report["responses"] = records
    return report


class _EvalEngines:
    """What ``evaluate`` scores with, each started on first use: one in-process
    ``RolloutWorker`` for log-likelihoods, token logprobs and, with ``eval.backend=vllm``,
    greedy generation (``generation.py`` batches it with transformers), and an in-process
    ``JudgeWorker`` (the sandbox, the LLM judge)."""

    def __init__(self, cfg, path: str) -> None:
        self.cfg, self.path = cfg, path
        self.generate_s = 0.0
        self._worker, self._worker_path, self._judge = None, None, None

    def greedy(self, prompts: list[str]) -> list[str]:
        from ray_s3ft.generation import generate_greedy_hf

        cfg, started = self.cfg, time.perf_counter()
        if cfg.eval.backend == "vllm":  # the scoring engine decodes too: one vLLM engine
            out = self.worker(self.path).greedy(prompts, cfg.eval.max_new_tokens)
        else:
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task("generating", total=len(prompts))
                out = generate_greedy_hf(
                    self.path,
                    prompts,
                    cfg.eval.max_new_tokens,
                    batch_size=cfg.eval.batch_size,
                    dtype=cfg.model.dtype,
                    on_batch=lambda n: bar.advance(task, n),
                )
        self.generate_s += time.perf_counter() - started
        return out

    def worker(self, path: str):
        """A scoring engine on ``path`` (one at a time: another path replaces it)."""
        if self._worker_path != path:
            from ray_s3ft.config import RolloutConfig
            from ray_s3ft.workers.rollout import RolloutWorker

            self._worker = None  # the old engine goes before the new one starts
            cfg = self.cfg
            rollout = RolloutConfig(
                backend=cfg.eval.backend,
                temperature=0.0,
                dtype=cfg.model.dtype,
                kv_cache_gib=cfg.rollout.kv_cache_gib,
            )
            self._worker = RolloutWorker(
                path, rollout, cfg.model.max_model_len, cfg.data.max_prompt_tokens,
                trust_remote_code=cfg.model.trust_remote_code,
            )  # fmt: skip
            self._worker_path = path
        return self._worker

    def judge(self, items: list) -> list:
        if self._judge is None:
            from ray_s3ft.config import resolved_judge
            from ray_s3ft.workers.judge import JudgeWorker

            cfg = self.cfg
            self._judge = JudgeWorker(
                resolved_judge(cfg), cfg.model.max_model_len, cfg.data.max_prompt_tokens
            )
        return self._judge.judge(items, by_item=True)

    def drift(self, path: str) -> dict:
        """``drift`` scores of ``path`` against the base model (``cfg.model.path``); the base
        answers are kept in ``eval.output_dir/drift_base.json``."""
        from ray_s3ft.model.paths import resolve_model_path
        from ray_s3ft.tasks import drift

        cfg, n = self.cfg, self.cfg.eval.max_new_tokens
        base = resolve_model_path(cfg.model.path)
        prompts = list(drift.PROMPTS[: cfg.eval.drift_size])
        items = drift.load_or_make_base(
            Path(cfg.eval.output_dir) / "drift_base.json",
            drift.fingerprint(base, prompts, n),
            lambda: drift.make_base(
                prompts,
                lambda p: self.worker(base).greedy_tokens(p, n),
                lambda pairs: self.worker(base).token_logprobs(pairs),
            ),
        )
        pairs = [(it.prompt_ids, it.token_ids) for it in items]
        return drift.drift_score(items, self.worker(path).token_logprobs(pairs))


def save_report(report: dict, out_dir: str | Path) -> Path:
    """``eval.json`` (the scores) and ``eval_responses.jsonl`` (every prompt and response)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = {k: v for k, v in report.items() if k != "responses"}
    path = out / "eval.json"
    path.write_text(json.dumps(scores, indent=2) + "\n")
    with open(out / "eval_responses.jsonl", "w") as f:
        for rec in report.get("responses", []):
            f.write(json.dumps(rec) + "\n")
    return path


def print_report(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"eval of {report['model']} ({report['backend']}, greedy)")
    for col in ("set", "accuracy", "correct / n", "unparsed", "acc_norm", "chance"):
        table.add_column(col, justify="right" if col != "set" else "left")
    rows = [("task", report["task"])] + [
        (f"held-out: {k}", v) for k, v in report["heldout"].items()
    ]

    def pct(x):
        return "" if x is None else f"{100 * x:.1f} %"

    for name, s in rows:
        table.add_row(
            name, pct(s["accuracy"]), f"{s['correct']} / {s['n']}", str(s["unparsed"]),
            pct(s.get("acc_norm")), pct(s.get("chance")),
        )  # fmt: skip
    if "heldout_mean" in report:
        table.add_row("held-out mean", pct(report["heldout_mean"]), "", "", "", "")
    console.print(table)
    task = report["task"]
    if "strict_accuracy" in task:
        console.print(
            f"task accuracy by answer extraction: strict {pct(task['strict_accuracy'])} "
            f"(markers only), flexible {pct(task['flexible_accuracy'])} (else the last number)",
            highlight=False,
        )
    if report.get("drift"):
        d = report["drift"]
        kl = "-" if d["kl"] is None else f"{d['kl']:.4f}"
        k3 = "-" if d["k3"] is None else f"{d['k3']:.4f}"
        console.print(
            f"drift from the base model: KL {kl} nats/token (k3 {k3}) on the base model's "
            f"greedy answers ({d['tokens']} tokens, {d['n']} prompts)",
            highlight=False,
        )
    if report.get("lm_eval"):
        lm = Table(title="lm-evaluation-harness")
        for col in ("task", "metric", "value", "stderr", "n"):
            lm.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for task, metrics in report["lm_eval"].items():
            for name, value in metrics.items():
                if name == "n" or name.split(",")[0].endswith("_stderr"):
                    continue
                err = metrics.get(
                    name.replace(",", "_stderr,", 1) if "," in name else f"{name}_stderr"
                )
                lm.add_row(
                    task,
                    name,
                    f"{value:.4f}",
                    "" if err is None else f"± {err:.4f}",
                    str(metrics.get("n", "")),
                )
        console.print(lm)
