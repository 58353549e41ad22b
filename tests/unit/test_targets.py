"""Target selection for gold / SSR / S3FT / SDFT (ray_s3ft/algo/targets.py)."""

import pytest

from ray_s3ft.algo.targets import (
    TARGET_MODES,
    Target,
    TargetSource,
    select_target,
    source_fractions,
    too_long_counts,
)

REC = {"gold": "G", "self_response": "S", "paraphrase": "P"}


def _pick(mode, self_ok, para_ok):
    return select_target(mode, self_ok=self_ok, paraphrase_ok=para_ok, **REC)


@pytest.mark.parametrize(
    ("self_ok", "para_ok", "gold", "ssr", "s3ft", "sdft"),
    [
        (True, True, "G", "S", "S", "P"),  # sdft never takes the self answer
        (True, False, "G", "S", "S", "G"),
        (False, True, "G", "G", "P", "P"),
        (False, False, "G", "G", "G", "G"),
        (None, True, "G", "G", "P", "P"),  # undecided judge = not accepted
        (True, None, "G", "S", "S", "G"),
        (None, None, "G", "G", "G", "G"),
    ],
)
def test_ladder(self_ok, para_ok, gold, ssr, s3ft, sdft):
    for mode, want in zip(TARGET_MODES, (gold, ssr, s3ft, sdft), strict=True):
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
    # sdft: a cut paraphrase the judge accepted is gold; an SDFT record has no y_self at all
    sdft = {"gold": "G", "paraphrase": "P", "paraphrase_ok": True}
    assert select_target("sdft", **sdft) == Target("P", TargetSource.PARAPHRASE)
    assert select_target("sdft", **sdft, paraphrase_finished=False) == Target(
        "G", TargetSource.GOLD
    )


def test_true_verdict_on_empty_response_raises():
    with pytest.raises(ValueError, match="self_ok"):
        select_target("ssr", gold="G", self_response=None, self_ok=True)
    with pytest.raises(ValueError, match="paraphrase_ok"):
        select_target("s3ft", gold="G", self_ok=False, paraphrase="  ", paraphrase_ok=True)
    # Gold mode consults no verdict, so it does not validate one.
    assert select_target("gold", gold="G", self_response=None, self_ok=True).text == "G"


def test_unknown_mode():
    with pytest.raises(ValueError, match="gold, ssr, s3ft, sdft"):
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


def test_an_accepted_target_over_the_response_budget_falls_to_the_next_rung():
    # the self answer is 4 characters, the paraphrase 3, the gold 1; a budget of 3 passes over
    # the self answer, 2 over both, 4 over none
    rec = {"gold": "G", "self_response": "SSSS", "paraphrase": "PPP"}

    def pick(mode, budget, self_ok=True, para_ok=True):
        return select_target(
            mode, self_ok=self_ok, paraphrase_ok=para_ok, fits=lambda t: len(t) <= budget, **rec
        )

    S, P = TargetSource.SELF, TargetSource.PARAPHRASE
    assert pick("s3ft", 4) == Target("SSSS", S)
    assert pick("s3ft", 3) == Target("PPP", P, too_long=(S,))
    assert pick("s3ft", 2) == Target("G", TargetSource.GOLD, too_long=(S, P))
    assert pick("ssr", 3) == Target("G", TargetSource.GOLD, too_long=(S,))
    # a rejected rung is never measured, so never counted as too long
    assert pick("s3ft", 2, self_ok=False) == Target("G", TargetSource.GOLD, too_long=(P,))
    assert pick("gold", 0) == Target("G", TargetSource.GOLD)
    assert pick("sdft", 3) == Target("PPP", P)  # the self answer is not a rung of sdft
    assert pick("sdft", 2) == Target("G", TargetSource.GOLD, too_long=(P,))
    # 3 targets: the self answer passed over twice, the paraphrase once
    picked = [pick("s3ft", 3), pick("s3ft", 2), pick("s3ft", 4)]
    assert too_long_counts(picked) == {"self": 2, "paraphrase": 1}
    assert source_fractions(picked) == pytest.approx(
        {"self": 1 / 3, "paraphrase": 1 / 3, "gold": 1 / 3}
    )
