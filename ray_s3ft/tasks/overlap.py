"""The check that a run does not evaluate on what it trains on.

A question in both the training set and the task's eval set makes the task accuracy measure
memory, and S3FT's gold rung hands the model that eval answer. Every run with data files (a
named set, a user file, a saved or hub dataset; not the built-in task, which generates disjoint
splits) is checked before any actor starts: the same prompt, up to whitespace and case, in
both is a ``DataError``.
"""

from __future__ import annotations

from ray_s3ft.tasks.types import DataError, Example

_SHOWN = 3  # questions quoted in the error
_QUOTE = 120  # characters of each


def normalise(text: str) -> str:
    """Whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def check_disjoint(
    train: list[Example],
    eval_: list[Example],
    train_src: str,
    eval_src: str,
    template: str = "{question}",
) -> None:
    """DataError naming both sources, the count and up to three of the questions when a
    (normalised) prompt is in both sets. ``template``: the prompt template both went through,
    whose text before ``{question}`` is left out of the quotes."""
    seen = {normalise(ex.prompt) for ex in train}
    shared = list(dict.fromkeys(q for ex in eval_ if (q := normalise(ex.prompt)) in seen))
    if not shared:
        return
    lead = normalise(template.partition("{question}")[0].format())
    quotes = [q.removeprefix(lead).strip() for q in shared[:_SHOWN]]
    shown = "; ".join(repr(q if len(q) <= _QUOTE else q[: _QUOTE - 3] + "...") for q in quotes)
    raise DataError(
        f"data.train_path={train_src} and data.eval_path={eval_src} share {len(shared)} "
        f"question(s) (compared with whitespace collapsed and case folded), e.g. {shown}; "
        "evaluate on questions the run does not train on"
    )
