"""``ray-s3ft eval``: task accuracy and held-out accuracy of a model, the numbers S3FT is about.

The S3FT paper's argument is three numbers: task accuracy, the drop on held-out abilities relative
to the base model, and the target source fractions. This module measures the first two for any
model directory (the base model, or a checkpoint of a run) with greedy decoding.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ray_s3ft.tasks.types import Example


@dataclass(frozen=True)
class SkillScore:
    accuracy: float  # correct / n
    correct: int
    n: int
    unparsed: int  # responses the verifier could not read (counted as wrong)


# A multiple-choice answer: an optional "The answer is" / "Answer:" lead, then a letter A-J that
# stands alone: in brackets, or followed by the end, punctuation or a line break ("B", "B.",
# "(B)"). After a lead a letter may be lower case, or followed by more words ("... is B because").
_ANSWER_LEAD = re.compile(r"(?:the\s+)?(?:correct\s+)?answer(?:\s+is)?\s*:?\s*", re.I)
_LETTER = r"\(([A-J])\)|\[([A-J])\]|([A-J])(?=[ \t]*(?:$|[\n.):;,-]))"
_BARE_LETTER = re.compile(_LETTER)
_LED_LETTER = re.compile(_LETTER + r"|([A-J])\b", re.I)


def read_choice(response: str) -> str | None:
    """The letter a multiple-choice response starts with ("B", "(B)", "The answer is B"), or None."""
    text = response.strip()
    lead = _ANSWER_LEAD.match(text)
    m = _LED_LETTER.match(text, lead.end()) if lead else _BARE_LETTER.match(text)
    if m is None or (lead and m.group(4) and not m.group(4).isupper()):
        return None
    return next(g for g in m.groups() if g).upper()


def score_response(example: Example, response: str) -> bool | None:
    """True / False, or None when the verifier cannot read the response."""
    if example.verifier == "math":
        from ray_s3ft.verifiers.math import verify_math

        return verify_math(response, example.answer)
    if example.verifier == "exact":
        return " ".join(response.split()) == " ".join(example.answer.split())
    if example.verifier == "choice":
        letter = read_choice(response)
        return None if letter is None else letter == example.answer.strip().upper()
    raise ValueError(
        f"example {example.id}: evaluation has no verifier {example.verifier!r} yet "
        "(math, exact, choice)"
    )


def score_set(examples: list[Example], responses: list[str]) -> SkillScore:
    verdicts = [score_response(ex, r) for ex, r in zip(examples, responses, strict=True)]
    correct = sum(v is True for v in verdicts)
    return SkillScore(
        accuracy=correct / max(1, len(examples)),
        correct=correct,
        n=len(examples),
        unparsed=sum(v is None for v in verdicts),
    )


def evaluate(cfg, model_path: str | None = None, progress=print) -> dict:
    """Greedy-decode every eval set with ``cfg.eval.backend`` and score it. Returns the report."""
    from ray_s3ft.generation import generate_greedy_hf, generate_greedy_vllm
    from ray_s3ft.model.paths import resolve_model_path
    from ray_s3ft.tasks.loaders import load_eval_examples

    path = resolve_model_path(model_path or cfg.model.path)
    sets = load_eval_examples(cfg.data, cfg.eval)  # {"task": ..., <held-out set>: ...}
    lm_tasks = list(cfg.eval.lm_eval_tasks)
    if lm_tasks:  # a missing harness or an unknown task fails now, not after decoding
        from ray_s3ft.lm_eval_suite import check_tasks

        check_tasks(lm_tasks, cfg.eval.lm_eval_include_path)
    prompts = [ex.prompt for exs in sets.values() for ex in exs]
    progress(
        f"eval: {len(prompts)} prompts ({', '.join(f'{k} {len(v)}' for k, v in sets.items())}) "
        f"with {cfg.eval.backend} on {path}"
    )
    started = time.perf_counter()
    if cfg.eval.backend == "vllm":
        responses = generate_greedy_vllm(
            path,
            prompts,
            cfg.eval.max_new_tokens,
            dtype=cfg.model.dtype,
            kv_cache_gib=cfg.rollout.kv_cache_gib,
            max_model_len=cfg.model.max_model_len,
        )
    else:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("generating", total=len(prompts))
            responses = generate_greedy_hf(
                path,
                prompts,
                cfg.eval.max_new_tokens,
                batch_size=cfg.eval.batch_size,
                dtype=cfg.model.dtype,
                on_batch=lambda n: bar.advance(task, n),
            )
    gen_s = time.perf_counter() - started

    report: dict = {"model": path, "backend": cfg.eval.backend, "generate_s": round(gen_s, 2)}
    records, i = [], 0
    scores: dict[str, SkillScore] = {}
    for name, exs in sets.items():
        resp = responses[i : i + len(exs)]
        i += len(exs)
        scores[name] = score_set(exs, resp)
        records += [
            {"set": name, "id": ex.id, "prompt": ex.prompt, "response": r, "answer": ex.answer}
            for ex, r in zip(exs, resp, strict=True)
        ]
    report["task"] = asdict(scores.pop("task"))
    report["heldout"] = {k: asdict(v) for k, v in scores.items()}
    if scores:
        report["heldout_mean"] = sum(v.accuracy for v in scores.values()) / len(scores)
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
    for col in ("set", "accuracy", "correct / n", "unparsed"):
        table.add_column(col, justify="right" if col != "set" else "left")
    rows = [("task", report["task"])] + [
        (f"held-out: {k}", v) for k, v in report["heldout"].items()
    ]
    for name, s in rows:
        table.add_row(
            name, f"{100 * s['accuracy']:.1f} %", f"{s['correct']} / {s['n']}", str(s["unparsed"])
        )
    if "heldout_mean" in report:
        table.add_row("held-out mean", f"{100 * report['heldout_mean']:.1f} %", "", "")
    console.print(table)
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
