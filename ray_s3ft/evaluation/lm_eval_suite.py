"""Optional lm-evaluation-harness suites on a saved model (``eval.lm_eval_tasks``).

``ray-s3ft eval`` runs these after its own greedy sets when ``eval.lm_eval_tasks`` names any: the
harness's ``hf`` model scores each task (its registered tasks, or the user's own task YAML files
in ``eval.lm_eval_include_path``) and the metrics land under ``"lm_eval"`` in ``eval.json`` as
``{task: {metric: value, "n": examples}}``, and each document's verdict in
``eval_responses.jsonl`` (set ``lm_eval/<task>``). The harness is the optional extra
``pip install 'ray-s3ft[lm-eval]'``; it is imported only here, only when a task is asked for.

Task names are checked against the harness's index before any model is loaded, so a typo fails
in seconds with ``eval.lm_eval_tasks`` named, not after the greedy sets have been decoded.
"""

from __future__ import annotations

import difflib
import functools
import math
from pathlib import Path

from ray_s3ft.tasks.types import DataError

INSTALL_HINT = "pip install 'ray-s3ft[lm-eval]'"


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None):
    """The harness's task index (seconds to build, so built once per include path)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise DataError(
            f"eval.lm_eval_tasks needs lm-evaluation-harness, which is not installed "
            f"({e}); install it with `{INSTALL_HINT}`"
        ) from e
    if include_path is not None and not Path(include_path).is_dir():
        raise DataError(f"eval.lm_eval_include_path: {include_path}: no such directory")
    return TaskManager(include_path=include_path)


def check_tasks(tasks: list[str], include_path: str | None = None) -> None:
    """Raise DataError naming ``eval.lm_eval_tasks`` for any task the harness does not know."""
    known = set(_task_manager(include_path).all_tasks)
    unknown = [t for t in tasks if t not in known and not Path(t).is_file()]
    if unknown:
        hints = [
            f"{t!r} (did you mean {', '.join(close)}?)" if close else repr(t)
            for t in unknown
            for close in [difflib.get_close_matches(t, known, n=3)]
        ]
        where = f" or in {include_path}" if include_path else ""
        raise DataError(
            f"eval.lm_eval_tasks: unknown lm-eval task(s) {', '.join(hints)}; "
            f"not registered in lm-evaluation-harness{where} (see `lm-eval ls tasks`)"
        )


def _metrics(results: dict) -> dict[str, dict]:
    """The harness's results -> {task: {metric: float, "n": examples}}; "acc,none" -> "acc",
    other filters kept as "metric,filter"; strings ("N/A" stderr, aliases) and nan are dropped."""
    out = {}
    for task, entry in results["results"].items():
        metrics: dict = {}
        for key, value in entry.items():
            metric, _, filt = key.partition(",")
            if not filt or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                metrics[metric if filt == "none" else key] = float(value)
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        if n is not None:
            metrics["n"] = int(n)
        out[task] = metrics
    return out


# a sample's own verdict, the first of these metrics it has (lm-eval's per-document values)
_VERDICTS = ("acc", "exact_match", "pass@1", "pass_at_1")


def _items(results: dict) -> list[dict]:
    """The harness's logged samples -> one record per document and filter: ``set``
    (``lm_eval/<task>``), ``id`` (the document's index), ``h`` (the harness's hash of the
    document), ``filter``, ``correct`` (its ``acc`` / ``exact_match`` / ``pass@1`` as a bool,
    None without one) and every numeric per-document ``metrics`` value."""
    out = []
    for task, samples in (results.get("samples") or {}).items():
        for s in samples:
            metrics = {  # bools included (a pass / fail metric)
                m: float(s[m]) for m in s.get("metrics", []) if isinstance(s.get(m), (int, float))
            }
            verdict = next((metrics[m] for m in _VERDICTS if m in metrics), None)
            out.append({
                "set": f"lm_eval/{task}", "id": str(s["doc_id"]), "h": str(s["doc_hash"])[:12],
                "filter": s.get("filter"), "correct": None if verdict is None else verdict == 1.0,
                "metrics": metrics,
            })  # fmt: skip
    return out


def run_lm_eval(
    model_dir: str,
    tasks: list[str],
    include_path: str | None,
    limit: int | None,
    batch_size: int,
    device: str = "cpu",
    dtype: str = "float32",
    with_items: bool = False,
):
    """Evaluate `model_dir` with the harness's ``hf`` model; ``{task: {metric: value, ...}}``,
    and with ``with_items`` each document's verdict too (``_items``): ``(metrics, items)``."""
    check_tasks(tasks, include_path)
    import lm_eval

    try:
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": model_dir, "dtype": dtype},
            tasks=list(tasks),
            task_manager=_task_manager(include_path),
            limit=limit,
            batch_size=batch_size,
            device=device,
            log_samples=with_items,
        )
    except KeyError as e:  # the harness's "not a registered task/group/tag name": a net
        if "registered" not in str(e):
            raise
        raise DataError(f"eval.lm_eval_tasks: {e.args[0]}") from e
    return (_metrics(results), _items(results)) if with_items else _metrics(results)
