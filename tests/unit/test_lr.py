"""Hand-computed learning rates of the per-mode warm-up (ray_s3ft/algo/lr.py)."""

import pytest

from ray_s3ft.algo.lr import warmup_lr


def test_warmup_ramps_linearly_to_the_base_lr():
    # W = 4: steps 0..3 at 1/5, 2/5, 3/5, 4/5 of 1e-4, step 4 on at 1e-4
    got = [warmup_lr(1e-4, n, 4) for n in range(7)]
    want = [2e-5, 4e-5, 6e-5, 8e-5, 1e-4, 1e-4, 1e-4]
    assert got == pytest.approx(want, rel=1e-12)


def test_no_warmup_is_the_base_lr_from_the_first_step():
    assert [warmup_lr(1e-3, n, 0) for n in range(3)] == [1e-3, 1e-3, 1e-3]


def test_one_warmup_step_halves_the_first():
    assert warmup_lr(3e-4, 0, 1) == pytest.approx(1.5e-4, rel=1e-12)
    assert warmup_lr(3e-4, 1, 1) == 3e-4


def test_negative_steps_are_refused():
    with pytest.raises(ValueError, match="step >= 0"):
        warmup_lr(1e-4, -1, 2)
