"""Prompts the pipeline sends to the model: each task's prompt template and its paraphrase prompt.

A task's template turns a data row's question into the user message. It is applied once, when
examples are loaded (``tasks/loaders.py``), so target building, rollouts, SFT batches and
evaluation all see the same prompt. ``data.prompt_template`` replaces it for a run.

- GSM8K: step-by-step reasoning ending in "The answer is N", the S3FT paper's prediction format
  (arXiv 2502.08130), which the math judge reads first.
- MBPP: the program in one fenced ```python block with the tests it must pass (the judge also
  reads S3FT's ``[[BEGIN]]``/``[[DONE]]`` markers).
- NQ: a short answer.
- The built-in task keeps its bare question: the built-in model was pretrained on it.

The paraphrase prompt is S3FT's middle rung: the base model rewrites the gold answer in its own
words, with the reference only as a guide, so the target stays close to the model's own
distribution while keeping the gold's content. For real tasks it restates the answer format
the prompt asks for, so an accepted paraphrase is also a well-formed answer.
"""

from __future__ import annotations

QUESTION = "{question}"
TASK_PROMPTS = {
    "builtin": QUESTION,
    "gsm8k": (
        "Solve the following math problem step by step. End your answer with "
        '"The answer is N." where N is the final number.\n\n{question}'
    ),
    "mbpp": (
        "Write a Python function for the task below. Put the complete code in one "
        "```python code block.\n\n{question}"
    ),
    "nq": "Answer the question with a short answer of a few words.\n\n{question}",
}

PARAPHRASE_TEMPLATE = (
    "{question}\n"
    "Reference answer: {reference}\n"
    "Using the reference answer only as a guide, write your own complete answer."
)
# what the paraphrase must keep of each task's answer format
_FORMAT = {
    "gsm8k": ' End it with "The answer is N." where N is the final number.',
    "mbpp": " Put the complete code in one ```python code block.",
    "nq": " Answer with a short answer of a few words.",
}
PARAPHRASE_PROMPTS = {
    task: PARAPHRASE_TEMPLATE + _FORMAT.get(task, "") for task in ("builtin", *_FORMAT)
}


def task_prompt_template(task: str, override: str | None = None) -> str:
    """``data.prompt_template`` if set, else the task's own."""
    return override if override is not None else TASK_PROMPTS.get(task, QUESTION)


def paraphrase_template(task: str, override: str | None = None) -> str:
    """``data.paraphrase_template`` if set, else the task's own."""
    return override if override is not None else PARAPHRASE_PROMPTS.get(task, PARAPHRASE_TEMPLATE)


def build_paraphrase_prompt(question: str, reference: str, template: str | None = None) -> str:
    template = PARAPHRASE_TEMPLATE if template is None else template
    return template.format(question=question.strip(), reference=reference.strip())
