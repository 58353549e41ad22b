"""Greedy answers with transformers on a model directory, in one call: a ``RolloutWorker`` on
the ``hf`` backend (``workers/engines.HFEngine``), the seam every generation goes through.

Evaluation is greedy (temperature 0), as the S3FT paper evaluates, so its numbers do not depend on
a sampling seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def generate_greedy_hf(
    model_path: str,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 64,
    dtype: str = "float32",
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Chat-format each prompt, decode greedily with ``transformers.generate`` in batches of
    prompts of similar length; the response texts. ``on_batch(n)`` is called after each batch
    of n prompts (progress display). Prompts are not cut."""
    from ray_s3ft.config import RolloutConfig
    from ray_s3ft.workers.rollout import RolloutWorker

    worker = RolloutWorker(
        model_path,
        RolloutConfig(backend="hf", temperature=0.0, dtype=dtype),
        max_model_len=1 << 30,  # only vLLM reads it
        max_prompt_tokens=1 << 30,
        hf_batch_size=batch_size,
    )
    return worker.greedy(prompts, max_new_tokens, on_batch=on_batch)
