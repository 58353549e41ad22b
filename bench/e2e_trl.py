"""End to end: GRPO samples/s and tokens/s of ``ray-s3ft train`` against TRL's GRPOTrainer.

Both train the built-in model on the built-in task with the same prompts, in the same order,
the same reward (``ray_s3ft.verifiers.steps.verify_steps``, which TRL's side imports from this
checkout), group size, max new tokens, prompts per step, steps, learning rate, KL coefficient and
clip range. TRL runs in a virtual environment of its own (torch and transformers at the versions
of ours), built on first use and reused while its pins stay the same. Only the training steps
are timed (after ``--warmup`` steps), never startup.

``--config FILE`` runs both on a config's model and task instead (for example
``configs/smollm2-135m-gsm8k.yaml``: SmolLM2-135M-Instruct, LoRA, math answers): its model, its
training prompts, its reward (the math verifier with the config's extraction, where the judge
resolves to it), its sampling temperature and its LoRA settings go to TRL's side as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from bench.common import ROOT, Row, parser, report

TRL = "trl==1.16.0"
VENV = Path(
    os.environ.get("RAY_S3FT_TRL_VENV", Path.home() / ".cache" / "ray-s3ft" / "bench-venv-trl")
)


def trl_venv(path: Path = VENV) -> Path:
    """The Python of a virtual environment with TRL, built when missing or its pins changed."""
    torch = f"torch=={metadata.version('torch').split('+')[0]}"
    pins = [
        torch,
        TRL,
        f"transformers=={metadata.version('transformers')}",  # the same model code as ours
        f"math-verify=={metadata.version('math-verify')}",  # what the rewards call
        f"peft=={metadata.version('peft')}",  # LoRA (model.lora)
    ]
    python, stamp = path / "bin" / "python", path / "ray-s3ft-pins.txt"
    if python.exists() and stamp.is_file() and stamp.read_text().split() == pins:
        return python
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # torch alone first, then held there: a looser resolve pulls a multi-GB CUDA build
    subprocess.run([*pip, torch], check=True)
    (path / "constraints.txt").write_text(torch + "\n")
    subprocess.run([*pip, "-c", str(path / "constraints.txt"), *pins[1:]], check=True)
    stamp.write_text("\n".join(pins) + "\n")
    return python


def _prompts(cfg, steps: int) -> list[dict]:
    """The GRPO prompts of ``steps`` steps, in the order the controller takes them."""
    from ray_s3ft.run.sampling import data_order
    from ray_s3ft.tasks.loaders import load_train_examples

    examples = load_train_examples(cfg.data)
    n = steps * cfg.trainer.grpo_prompts_per_step
    idx = data_order("grpo", len(examples), 0, n, cfg.trainer.seed)
    return [{"prompt": examples[i].prompt, "answer": examples[i].answer} for i in idx]


def _rates(step_s: list[float], tokens: list[float], samples: int, warmup: int) -> dict:
    s, t = step_s[warmup:], tokens[warmup:]
    return {
        "samples_per_s": samples * len(s) / sum(s),
        "tokens_per_s": sum(t) / sum(s),
        "step_s": s,
        "tokens": t,
    }


def ours(args, overrides: list[str], work: Path) -> dict:
    run = work / "ours"
    exe = Path(sys.executable).with_name("ray-s3ft")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ray_s3ft.cli"]
    cmd.append("train")
    if args.config:
        cmd += ["--config", str(Path(args.config).resolve())]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private cluster
    r = subprocess.run(
        [*cmd, *overrides, f"trainer.output_dir={run}"],
        env=env, cwd=ROOT, capture_output=True, text=True,  # the config's relative paths
    )  # fmt: skip
    if r.returncode:
        sys.exit(f"ray-s3ft train failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    samples = args.prompts_per_step * args.group_size
    tokens = [x["rollout/response_tokens"] * samples for x in rows]
    out = _rates([x["timing/step"] for x in rows], tokens, samples, args.warmup)
    out["reward"] = [x["reward/mean"] for x in rows]
    out["phases_s"] = {k: sum(x[f"timing/{k}"] for x in rows[args.warmup :])
                       for k in ("sync", "rollout", "judge", "batch", "train")}  # fmt: skip
    return out


def trl(args, cfg, work: Path) -> dict:
    from ray_s3ft.config import resolved_judge
    from ray_s3ft.model.paths import resolve_model_path

    python = trl_venv(args.trl_venv)
    data, out = work / "prompts.json", work / "trl.json"
    data.write_text(json.dumps(_prompts(cfg, args.steps)))
    g, t = cfg.algorithm.grpo, cfg.trainer
    cmd = [
        str(python), str(Path(__file__).with_name("trl_grpo.py")),
        "--model", resolve_model_path(cfg.model.path), "--data", str(data), "--out", str(out),
        "--work", str(work / "trl"), "--steps", str(args.steps),
        "--prompts-per-step", str(args.prompts_per_step), "--group-size", str(args.group_size),
        "--max-new-tokens", str(args.max_new), "--seed", str(t.seed), "--lr", str(cfg.learner.grpo_lr),
        "--beta", str(g.beta), "--eps-low", str(g.eps_low), "--eps-high", str(g.eps_high),
        "--grad-clip", str(cfg.learner.grad_clip), "--temperature", str(cfg.rollout.temperature),
    ]  # fmt: skip
    judge = resolved_judge(cfg)
    if judge.verifier == "math":
        cmd += ["--reward", "math", "--math-extract", judge.math_extract]
    elif judge.verifier != "steps":
        sys.exit(f"e2e_trl: no TRL reward for judge.verifier={judge.verifier}")
    lora = cfg.model.lora
    if lora.enabled:
        cmd += ["--lora-r", str(lora.r), "--lora-alpha", str(lora.alpha),
                "--lora-dropout", str(lora.dropout), "--lora-targets", ",".join(lora.target_modules)]  # fmt: skip
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"TRL failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    res = json.loads(out.read_text())
    samples = res["samples_per_step"]
    rates = _rates(res["step_s"], [m * samples for m in res["mean_length"]], samples, args.warmup)
    return {**rates, "reward": res["reward"]}


def main(argv=None) -> dict:
    from ray_s3ft.config import load_config

    ap = parser("e2e_trl", __doc__)
    ap.add_argument("--config", help="a run config (default: the built-in run)")
    ap.add_argument(
        "--ours", default="", help="space-separated key=value for ray-s3ft's side only, such as "
        "rollout.async=true (one-step off-policy sampling; TRL has no CPU equivalent)",
    )  # fmt: skip
    ap.add_argument("--steps", type=int, default=12, help="GRPO steps, warm-up included")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the rates")
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", dest="max_new", type=int, default=96)
    ap.add_argument("--trl-venv", type=Path, default=VENV, help="TRL's virtual environment")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.prompts_per_step, args.group_size = 2, 1, 2, 2
        args.max_new = 16
    batch = args.prompts_per_step * args.group_size
    overrides = [
        "schedule.kind=grpo",
        "algorithm.targets=gold",  # GRPO steps never read SFT targets: skip building them
        f"trainer.max_steps={args.steps}",
        f"trainer.grpo_prompts_per_step={args.prompts_per_step}",
        f"algorithm.grpo.group_size={args.group_size}",
        f"rollout.max_new_tokens={args.max_new}",
        f"learner.micro_batch_size={batch // 2}",  # one micro-batch per rank, as the default
        f"trainer.checkpoint_every={args.steps + 1}",  # no checkpoint inside the timed steps
        "eval.every=0",
        "eval.task_size=8",
        "eval.heldout=[]",  # evaluation is not timed: the least of it
        "eval.drift=false",
    ]
    cfg = load_config(args.config, overrides)
    with tempfile.TemporaryDirectory(prefix="rb-e2e-") as tmp:
        work = Path(tmp)
        peer = trl(args, cfg, work)
        mine = ours(args, overrides + args.ours.split(), work)
    rows = [
        Row("ray-s3ft vs TRL GRPOTrainer: samples/s", mine["samples_per_s"],
            peer["samples_per_s"], "samples/s", (">=", 2.0)),
        Row("ray-s3ft vs TRL GRPOTrainer: tokens/s", mine["tokens_per_s"],
            peer["tokens_per_s"], "tokens/s", (">=", 2.0)),
    ]  # fmt: skip
    details = {"ours": mine, "trl": peer, "trl_version": TRL, "overrides": overrides,
               "ours_only": args.ours.split()}  # fmt: skip
    return report("e2e_trl", args, rows, details)


if __name__ == "__main__":
    main()
