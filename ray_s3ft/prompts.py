"""Prompts the pipeline sends to the model, shared by every task.

The paraphrase prompt is S3FT's middle rung (arXiv 2502.08130): the base model rewrites the gold
answer in its own words, with the reference only as a guide, so the target stays close to the
model's own distribution while keeping the gold's content.
"""

from __future__ import annotations

PARAPHRASE_TEMPLATE = (
    "{question}\n"
    "Reference answer: {reference}\n"
    "Using the reference answer only as a guide, write your own complete answer."
)


def build_paraphrase_prompt(question: str, reference: str) -> str:
    return PARAPHRASE_TEMPLATE.format(question=question.strip(), reference=reference.strip())
