"""GSM8K-format word problems for trying a real model here: ``assets/data/wordproblems/``.

GSM8K itself lives on a model hub this project cannot assume. These files hold short (one- or
two-step) arithmetic word problems in GSM8K's own format, ``{"question", "answer"}`` with the
terse gold solution, its ``<<a+b=c>>`` calculator annotations and a final ``#### N`` line, so
they go through the ``gsm8k`` loader, prompt, judge and evaluation unchanged
(``data.task=gsm8k``). As in the papers' setting, a small instruct model solves part of them
in its own chain-of-thought style, while the gold answers are written in another.

Two sets ship: ``wordproblems/`` (one or two steps; SmolLM2-135M-Instruct solves 7 % of the
test split greedily) and ``wordproblems-1step/`` (one step; it solves 21 %), the setting of
the real-model grid, where the model's own answers are right often enough to be targets.

Regenerate (deterministic): ``python -m ray_s3ft.tasks.wordproblems [--one-step] --out DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ray_s3ft.tasks.builtin import _GAIN, _LOSS, ArithSpec, Problem, sample_problem

DATA_DIR = Path(__file__).resolve().parent.parent / "assets" / "data" / "wordproblems"
SPEC = ArithSpec(min_steps=1, max_steps=2, max_start=20, max_operand=9, max_value=30)
ONE_STEP = ArithSpec(min_steps=1, max_steps=1, max_start=20, max_operand=9, max_value=30)
ONE_STEP_DIR = DATA_DIR.parent / "wordproblems-1step"
SIZES = {"train": 256, "test": 128}


def gsm8k_answer(p: Problem) -> str:
    """GSM8K's gold style: one terse sentence a step with its calculator annotation."""
    totals, lines = p.totals, []
    for i, (verb, sign, operand) in enumerate(p.steps):
        op = "+" if sign > 0 else "-"
        calc = f"{totals[i]}{op}{operand}"
        gerund = _GAIN[verb][1] if sign > 0 else _LOSS[verb][1]
        lines.append(f"After {gerund} {operand}, {p.name} has {calc}=<<{calc}={totals[i + 1]}>>"
                     f"{totals[i + 1]} {p.item}.")  # fmt: skip
    return "\n".join(lines) + f"\n#### {p.answer}"


def rows(split: str, size: int, seed: int = 0, spec: ArithSpec = SPEC) -> list[dict]:
    """``size`` distinct problems; the test split shares no question with the train split."""
    import random

    tag = "wordproblems" if spec == SPEC else "wordproblems-1step"
    rng = random.Random(f"{tag}:{split}:{seed}")
    taken = set()
    if split == "test":
        taken = {r["question"] for r in rows("train", SIZES["train"], seed, spec)}
    out: list[dict] = []
    while len(out) < size:
        p = sample_problem(rng, spec)
        q = p.question()
        if q not in taken:
            taken.add(q)
            out.append({"question": q, "answer": gsm8k_answer(p)})
    return out


def write(out_dir: Path, seed: int = 0, spec: ArithSpec = SPEC) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, size in SIZES.items():
        path = out_dir / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows(split, size, seed, spec)))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="default: the shipped directory of the set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one-step", action="store_true", help="the one-step set")
    args = ap.parse_args(argv)
    spec = ONE_STEP if args.one_step else SPEC
    out = args.out or (ONE_STEP_DIR if args.one_step else DATA_DIR)
    for path in write(out, args.seed, spec):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
