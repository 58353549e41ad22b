"""TRL's GRPOTrainer on the built-in model: the peer side of ``bench/e2e_trl.py``.

Runs in TRL's own virtual environment, not ours; it imports only the reward from this checkout
(``ray_s3ft.verifiers.steps``: plain Python). Writes the wall time, mean completion length and
reward of every optimizer step to ``--out``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from ray_s3ft.verifiers.math import verify_math  # noqa: E402
from ray_s3ft.verifiers.steps import verify_steps  # noqa: E402


def steps_reward(prompts, completions, question, answer, **_):
    """``ray-s3ft``'s GRPO reward for the built-in task: 1 when the step judge accepts."""
    return [
        1.0 if verify_steps(q, c[0]["content"], a) else 0.0
        for q, c, a in zip(question, completions, answer, strict=True)
    ]


def math_reward(extract: str):
    """``ray-s3ft``'s GRPO reward for math tasks: 1 when the final answer verifies (an
    undecided verdict scores 0, as ``algorithm.grpo.undecided_reward`` does by default)."""

    def reward(prompts, completions, question, answer, **_):
        return [
            1.0 if verify_math(c[0]["content"], a, extract) else 0.0
            for c, a in zip(completions, answer, strict=True)
        ]

    return reward


class StepTimes(TrainerCallback):
    def __init__(self) -> None:
        self.seconds, self.logs = [], []

    def on_step_begin(self, args, state, control, **kw):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.seconds.append(time.perf_counter() - self.started)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "completions/mean_length" in logs:
            self.logs.append(logs)


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("--model", "--data", "--out", "--work"):
        ap.add_argument(name, required=True)
    for name in ("--steps", "--prompts-per-step", "--group-size", "--max-new-tokens", "--seed"):
        ap.add_argument(name, type=int, required=True)
    for name in ("--lr", "--beta", "--eps-low", "--eps-high", "--grad-clip"):
        ap.add_argument(name, type=float, required=True)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--reward", choices=("steps", "math"), default="steps")
    ap.add_argument("--math-extract", default="strict")
    ap.add_argument("--lora-r", type=int, default=0, help="0: full fine-tuning")
    ap.add_argument("--lora-alpha", type=int, default=16)
    ap.add_argument("--lora-dropout", type=float, default=0.0)
    ap.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj")
    a = ap.parse_args()

    rows = json.loads(Path(a.data).read_text())  # in the order ray-s3ft visits them
    data = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": r["prompt"]}], "question": r["prompt"],
             "answer": r["answer"]}
            for r in rows
        ]
    )  # fmt: skip
    batch = a.prompts_per_step * a.group_size
    config = GRPOConfig(
        output_dir=a.work,
        use_cpu=True,
        bf16=False,  # fp32, as ours
        use_vllm=False,
        max_steps=a.steps,
        per_device_train_batch_size=batch,  # completions per optimizer step
        gradient_accumulation_steps=1,
        num_generations=a.group_size,
        max_completion_length=a.max_new_tokens,
        temperature=a.temperature,
        top_p=1.0,
        learning_rate=a.lr,
        lr_scheduler_type="constant",  # DeepSpeed without a scheduler: constant
        weight_decay=0.0,
        max_grad_norm=a.grad_clip,
        optim="adamw_torch",  # torch AdamW, as ours
        beta=a.beta,
        epsilon=a.eps_low,
        epsilon_high=a.eps_high,
        loss_type="dapo",
        scale_rewards="group",
        num_iterations=1,
        shuffle_dataset=False,
        seed=a.seed,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    tok = AutoTokenizer.from_pretrained(a.model)
    peft = None
    if a.lora_r:
        from peft import LoraConfig

        peft = LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                          target_modules=a.lora_targets.split(","), task_type="CAUSAL_LM")  # fmt: skip
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(a.model, dtype="float32"),
        processing_class=tok,
        reward_funcs=steps_reward if a.reward == "steps" else math_reward(a.math_extract),
        args=config,
        train_dataset=data,
        peft_config=peft,
    )
    times = StepTimes()
    trainer.add_callback(times)
    trainer.train()
    Path(a.out).write_text(
        json.dumps(
            {
                "step_s": times.seconds,
                "mean_length": [x["completions/mean_length"] for x in times.logs],
                "reward": [x.get("reward", float("nan")) for x in times.logs],
                "samples_per_step": batch,
            }
        )
    )


if __name__ == "__main__":
    main()
