"""Target selection for gold / SSR / S3FT (ray_s3ft/algo/targets.py)."""

import pytest

from ray_s3ft.algo.targets import (
    TARGET_MODES,
    Target,
    TargetSource,
    select_target,
    source_fractions,
)

REC = {"gold": "G", "self_response": "S", "paraphrase": "P"}


def _pick(mode, self_ok, para_ok):
    return select_target(mode, self_ok=self_ok, paraphrase_ok=para_ok, **REC)


@pytest.mark.parametrize(
    ("self_ok", "para_ok", "gold", "ssr", "s3ft"),
    [
        (True, True, "G", "S", "S"),
        (True, False, "G", "S", "S"),
        (False, True, "G", "G", "P"),
        (False, False, "G", "G", "G"),
        (None, True, "G", "G", "P"),  # undecided judge = not accepted
        (None, None, "G", "G", "G"),
    ],
)
def test_ladder(self_ok, para_ok, gold, ssr, s3ft):
    for mode, want in zip(TARGET_MODES, (gold, ssr, s3ft), strict=True):
        assert _pick(mode, self_ok, para_ok).text == want


def test_sources():
    assert _pick("s3ft", True, None) == Target("S", TargetSource.SELF)
    assert _pick("s3ft", False, True) == Target("P", TargetSource.PARAPHRASE)
    assert _pick("s3ft", False, False) == Target("G", TargetSource.GOLD)


def test_a_cut_answer_is_never_a_target_whatever_the_judge_said():
    # y_self cut at the budget but accepted: ssr falls to gold, s3ft to the paraphrase
    cut_self = {"self_ok": True, "paraphrase_ok": True, "self_finished": False}
    assert select_target("ssr", **REC, **cut_self).source == TargetSource.GOLD
    assert select_target("s3ft", **REC, **cut_self) == Target("P", TargetSource.PARAPHRASE)
    both_cut = {**cut_self, "paraphrase_finished": False}
    assert select_target("s3ft", **REC, **both_cut) == Target("G", TargetSource.GOLD)
    # a cut paraphrase does not block an accepted, finished y_self
    assert select_target("s3ft", **REC, self_ok=True, paraphrase_finished=False).text == "S"


def test_true_verdict_on_empty_response_raises():
    with pytest.raises(ValueError, match="self_ok"):
        select_target("ssr", gold="G", self_response=None, self_ok=True)
    with pytest.raises(ValueError, match="paraphrase_ok"):
        select_target("s3ft", gold="G", self_ok=False, paraphrase="  ", paraphrase_ok=True)
    # Gold mode consults no verdict, so it does not validate one.
    assert select_target("gold", gold="G", self_response=None, self_ok=True).text == "G"


def test_unknown_mode():
    with pytest.raises(ValueError, match="gold, ssr, s3ft"):
        select_target("dpo", gold="G")


def test_source_fractions():
    # 2 self, 1 paraphrase, 1 gold out of 4 -> 0.5 / 0.25 / 0.25.
    targets = [
        Target("a", TargetSource.SELF),
        Target("b", TargetSource.SELF),
        Target("c", TargetSource.PARAPHRASE),
        Target("d", TargetSource.GOLD),
    ]
    assert source_fractions(targets) == {"self": 0.5, "paraphrase": 0.25, "gold": 0.25}
    assert source_fractions(iter(targets)) == {"self": 0.5, "paraphrase": 0.25, "gold": 0.25}
    assert source_fractions([]) == {"self": 0.0, "paraphrase": 0.0, "gold": 0.0}
