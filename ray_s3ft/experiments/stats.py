"""The questions' sampling error of a grid's accuracies, from each question's verdict.

Every seed of a grid answers the same questions, so pooling the seeds' answers as if they were
more questions (n = seeds x questions) understates the error of a mean over seeds: the seeds
average out the training noise, not the luck of which questions were drawn. Here a method's
verdicts on one eval set are a matrix ``v[q][s]`` (question q, seed s; 1 correct, 0 wrong or
undecided) over the same questions for every seed, and two methods are compared on the
questions both answered (a paired difference), which removes the questions' shared difficulty
from the comparison.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

Verdicts = Sequence[Sequence[float]]  # [Q questions][S seeds], 1.0 = correct


def sample_std(xs: Sequence[float]) -> float:
    """Sample std (n - 1); 0 for a single value."""
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def seed_mean_se(v: Verdicts) -> dict:
    """A method's accuracy on one eval set: ``mean`` over questions and seeds, ``seed_std``
    (sample std over seeds of each seed's accuracy: the training noise), and ``se``, the
    questions' standard error of the seed-mean accuracy:

        m_q = mean_s v[q][s]                     each question's accuracy over the seeds
        se  = sqrt( sum_q (m_q - mean)^2 / (Q - 1) ) / sqrt(Q)

    (the standard error of the mean of the Q per-question accuracies; None for one question).
    ``n``: questions, ``seeds``: seeds."""
    q = len(v)
    s = len(v[0]) if q else 0
    if not q or not s:
        return {"mean": None, "se": None, "seed_std": None, "n": q, "seeds": s}
    m = [sum(row) / s for row in v]  # [Q]
    mean = sum(m) / q
    per_seed = [sum(row[j] for row in v) / q for j in range(s)]  # [S]
    se = sample_std(m) / math.sqrt(q) if q > 1 else None
    return {"mean": mean, "se": se, "seed_std": sample_std(per_seed), "n": q, "seeds": s}


def paired_difference(a: Verdicts, b: Verdicts, n_boot: int = 2000, seed: int = 0) -> dict:
    """Method A minus method B on the same Q questions (row q of ``a`` and of ``b`` is the
    same question; A and B may have different numbers of seeds). Each question's difference of
    seed-mean accuracies, d_q = mean_s a[q][s] - mean_s b[q][s]; ``diff`` = mean_q d_q; ``se``
    its standard error by a paired bootstrap over questions: ``n_boot`` resamples of Q
    questions with replacement (the same draw for A and B, seeds averaged), seeded RNG, the
    sample std of the resampled means. With many resamples ``se`` tends to
    sqrt( sum_q (d_q - diff)^2 / Q ) / sqrt(Q) (None for one question). ``n``: questions."""
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"paired difference: {len(a)} questions against {len(b)}")
    q = len(a)
    if not q:
        return {"diff": None, "se": None, "n": 0}
    d = np.asarray(a, dtype=float).mean(axis=1) - np.asarray(b, dtype=float).mean(axis=1)  # [Q]
    if q < 2:  # one question has no spread to resample
        return {"diff": float(d.mean()), "se": None, "n": q}
    idx = np.random.default_rng(seed).integers(0, q, size=(n_boot, q))  # [n_boot, Q]
    means = d[idx].mean(axis=1)  # [n_boot]
    return {"diff": float(d.mean()), "se": float(means.std(ddof=1)), "n": q}


def mean_of_independent(parts: Sequence[dict]) -> dict:
    """The mean of K differences measured on independent question sets (the held-out mean of
    K sets): mean of the ``diff``s, se = sqrt(sum_k se_k^2) / K. None if any part is."""
    if not parts or any(p.get("diff") is None or p.get("se") is None for p in parts):
        return {"diff": None, "se": None, "n": sum(p.get("n") or 0 for p in parts)}
    k = len(parts)
    return {
        "diff": sum(p["diff"] for p in parts) / k,
        "se": math.sqrt(sum(p["se"] ** 2 for p in parts)) / k,
        "n": sum(p["n"] for p in parts),
    }
