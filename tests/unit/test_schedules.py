"""The step-wise SFT/GRPO schedules, SASR gate included (ray_s3ft/algo/schedules.py)."""

import json
import math

import pytest

from ray_s3ft.algo.schedules import SCHEDULE_KINDS, Decision, make_schedule


def _feed(sched, step, decision):
    """Report synthetic learner stats for ``step`` the way the controller would."""
    if decision.mode == "sft":
        sched.observe(step, "sft", sft_grad_norm=1.0 + 0.5 * math.sin(step))
    elif decision.mode == "mix":  # a mix step reports its SFT part's norm and the KL
        sched.observe(
            step, "mix", sft_grad_norm=1.0 + 0.5 * math.sin(step), kl=0.02 + 0.01 * math.cos(step)
        )
    else:
        sched.observe(step, "grpo", kl=0.02 + 0.01 * math.cos(step))
        if decision.probe:
            sched.observe_probe(step, 1.2 + 0.3 * math.cos(step))


def _run(sched, start, stop):
    out = []
    for step in range(start, stop):
        d = sched.decide(step)
        _feed(sched, step, d)
        out.append((d.mode, d.p_sft, d.probe))
    return out


def _sasr(**kw):
    return make_schedule("sasr", **{"seed": 0, "warmup_steps": 2, **kw})


def test_sasr_default_is_the_papers_rule():
    # p_t = G_last / (G_last + gamma * G_warm); G_last moves on SFT steps only, no clipping
    s = _sasr(gamma=1.0)
    s.observe(0, "sft", sft_grad_norm=4.0)
    s.observe(1, "sft", sft_grad_norm=2.0)  # W-1: G_warm = G_last = 2
    assert s.decide(2).p_sft == pytest.approx(0.5)  # 1 / (1 + gamma)
    assert s.decide(2).probe is False  # no probes by default
    s.observe(2, "grpo", kl=5.0)  # a GRPO step moves neither G_last nor (lam = 0) the gate
    assert s.decide(3).p_sft == pytest.approx(0.5)
    s.observe(3, "sft", sft_grad_norm=6.0)  # p = 6 / (6 + 2) = 0.75: the latest norm, no EMA
    assert s.decide(4).p_sft == pytest.approx(0.75)
    s.observe(4, "sft", sft_grad_norm=0.5)  # p = 0.5 / 2.5 = 0.2
    assert s.decide(5).p_sft == pytest.approx(0.2)
    s2 = _sasr(gamma=3.0)
    s2.observe(0, "sft", sft_grad_norm=1.0)
    s2.observe(1, "sft", sft_grad_norm=1.0)
    assert s2.decide(2).p_sft == pytest.approx(0.25)  # 1 / (1 + 3)
    s2.observe(2, "sft", sft_grad_norm=9.0)  # 9 / (9 + 3) = 0.75
    assert s2.decide(3).p_sft == pytest.approx(0.75)


def test_sasr_extensions_hand_computed_gate():
    # our options: EMA 0.9, probes, KL term (lam 1, kl_target 0.05), clipping to [0.05, 0.95]
    s = _sasr(lam=1.0, p_min=0.05, p_max=0.95, ema_decay=0.9, probe_every=4)
    s.observe(0, "sft", sft_grad_norm=4.0)  # first observation: G_t = 4
    st = s.stats()
    assert st["grad_norm"] == 4.0 and math.isnan(st["grad_norm_warm"]) and st["kl"] == 0.0
    # Step 1 = W-1: G_warm = 2 and G_t re-anchored to 2 (the EMA would have said 3.8).
    s.observe(1, "sft", sft_grad_norm=2.0)
    assert (s.stats()["grad_norm"], s.stats()["grad_norm_warm"]) == (2.0, 2.0)
    # Step 2: p = 2 / (2 + 1*2) * (1 + 1 * 0 / 0.05) = 0.5.
    assert s.decide(2).p_sft == pytest.approx(0.5)
    assert s.stats()["p_sft"] == pytest.approx(0.5)
    # GRPO step 2 reports KL 0.025; a probe reports 4: G_t = 0.9*2 + 0.1*4 = 2.2.
    s.observe(2, "grpo", kl=0.025)
    s.observe_probe(2, 4.0)
    # p = 2.2 / (2.2 + 2) * (1 + 0.025 / 0.05) = (2.2 / 4.2) * 1.5 = 3.3 / 4.2 = 11/14.
    assert s.decide(3).p_sft == pytest.approx(11 / 14)
    # SFT step 3 reports 1.0: G_t = 0.9*2.2 + 0.1*1.0 = 2.08; KL stays 0.025.
    # p = 2.08 / 4.08 * 1.5 = 3.12 / 4.08 = 13/17.
    s.observe(3, "sft", sft_grad_norm=1.0)
    assert s.decide(4).p_sft == pytest.approx(13 / 17)
    assert s.stats()["grad_norm"] == pytest.approx(2.08)
    # Clip at p_max: KL 0.2 -> factor 1 + 0.2/0.05 = 5 -> 2.08/4.08*5 = 2.55 -> 0.95.
    s.observe(4, "grpo", kl=0.2)
    assert s.decide(5).p_sft == 0.95


def test_sasr_clips_at_p_min():
    s = _sasr(gamma=100.0, p_min=0.05)
    s.observe(0, "sft", sft_grad_norm=2.0)
    s.observe(1, "sft", sft_grad_norm=2.0)
    # 2 / (2 + 100*2) = 0.0099 < p_min 0.05.
    assert s.decide(2).p_sft == 0.05


def test_sasr_warmup_always_sft_and_needs_warm_signal():
    s = _sasr(warmup_steps=5)
    for step in range(5):  # no observations needed during warm-up
        assert s.decide(step) == Decision("sft", 1.0, False)
    with pytest.raises(RuntimeError, match="step 4"):
        s.decide(5)
    s.observe(4, "sft")  # a step with no grad norm reported still leaves G_warm missing
    with pytest.raises(RuntimeError, match="last warm-up step"):
        s.decide(5)


def test_sasr_probe_cadence():
    s = _sasr(warmup_steps=1, p_min=0.0, p_max=0.0, probe_every=4)  # always GRPO after warm-up
    s.observe(0, "sft", sft_grad_norm=1.0)
    probes = []
    for step in range(1, 13):
        d = s.decide(step)
        assert d == s.decide(step)  # decide() is idempotent: no hidden state change
        assert d.mode == "grpo"
        probes.append(d.probe)
        s.observe(step, "grpo", kl=0.01)
    # GRPO steps #4, #8, #12 are steps 4, 8, 12.
    assert [step for step, p in zip(range(1, 13), probes, strict=True) if p] == [4, 8, 12]


def test_sasr_determinism_across_seeds():
    a = _run(_sasr(seed=7), 0, 200)
    b = _run(_sasr(seed=7), 0, 200)
    c = _run(_sasr(seed=8), 0, 200)
    assert a == b
    assert [m for m, _, _ in a] != [m for m, _, _ in c]
    assert {m for m, _, _ in a[2:]} == {"sft", "grpo"}


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_resume_gives_identical_decisions(kind):
    kw = {"seed": 3, "warmup_steps": 5}
    full = _run(make_schedule(kind, **kw), 0, 120)
    first = make_schedule(kind, **kw)
    head = _run(first, 0, 50)
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    resumed = make_schedule(kind, **kw)
    resumed.load_state_dict(state)
    assert resumed.stats() == pytest.approx(first.stats(), nan_ok=True)
    assert head + _run(resumed, 50, 120) == full


def test_state_dict_is_json_plain_before_any_observation():
    s = _sasr()
    state = s.state_dict()
    assert json.loads(json.dumps(state, allow_nan=False)) == state
    st = s.stats()
    assert {"p_sft", "grad_norm", "grad_norm_warm", "kl"} <= st.keys()
    assert math.isnan(st["p_sft"]) and math.isnan(st["grad_norm"]) and st["kl"] == 0.0
    with pytest.raises(ValueError, match="kind"):
        make_schedule("grpo", seed=0).load_state_dict(state)


def test_nonfinite_observation_skipped_and_counted():
    s = _sasr()
    s.observe(0, "sft", sft_grad_norm=3.0)
    s.observe_probe(0, math.inf)
    s.observe(0, "grpo", kl=math.nan)
    assert s.stats()["grad_norm"] == 3.0 and s.stats()["kl"] == 0.0
    assert s.stats()["nonfinite_obs"] == 2.0
    with pytest.raises(ValueError, match="sft_grad_norm"):
        s.observe_probe(0, -1.0)


def test_a_kl_rounded_below_zero_is_zero_and_a_negative_one_an_error():
    # the mean k3 of a policy equal to its reference (first GRPO step without dropout) came
    # out -3.7e-10 on SmolLM2; exp(d) - d - 1 >= 0 for every d, so only rounding makes that
    s = _sasr()
    s.observe(0, "grpo", kl=0.25)
    s.observe(1, "grpo", kl=-3.702151849403144e-10)
    assert s.stats()["kl"] == 0.0
    with pytest.raises(ValueError, match=r"kl must be >= 0, got -0.001"):
        s.observe(2, "grpo", kl=-1e-3)


def test_sft_grpo_and_sft_then_grpo():
    sft, grpo = make_schedule("sft", seed=0), make_schedule("grpo", seed=0)
    assert all(sft.decide(i).mode == "sft" and sft.decide(i).p_sft == 1.0 for i in range(50))
    assert all(grpo.decide(i).mode == "grpo" and grpo.decide(i).p_sft == 0.0 for i in range(50))
    s = make_schedule("sft_then_grpo", seed=0, warmup_steps=3)
    assert [s.decide(i).mode for i in range(6)] == ["sft"] * 3 + ["grpo"] * 3
    assert not any(s.decide(i).probe for i in range(6))


def test_fixed_ratio_frequency_and_extremes():
    s = make_schedule("fixed_ratio", seed=11, p_sft=0.3)
    modes = [s.decide(i).mode for i in range(2000)]
    # Binomial(2000, 0.3): std = sqrt(2000 * 0.3 * 0.7) / 2000 = 0.0102; allow ~4 std.
    assert abs(modes.count("sft") / 2000 - 0.3) < 0.04
    always = make_schedule("fixed_ratio", seed=11, p_sft=1.0)
    never = make_schedule("fixed_ratio", seed=11, p_sft=0.0)
    assert {always.decide(i).mode for i in range(200)} == {"sft"}
    assert {never.decide(i).mode for i in range(200)} == {"grpo"}
    warm = make_schedule("fixed_ratio", seed=11, p_sft=0.0, warmup_steps=10)
    assert [warm.decide(i).mode for i in range(12)] == ["sft"] * 10 + ["grpo"] * 2


@pytest.mark.parametrize(
    ("kind", "kw", "name"),
    [
        ("sasr", {"gamma": 0.0}, "gamma"),
        ("sasr", {"kl_target": 0.0}, "kl_target"),
        ("sasr", {"lam": -1.0}, "lam"),
        ("sasr", {"p_min": 0.6, "p_max": 0.5}, "p_min"),
        ("sasr", {"p_max": 1.5}, "p_max"),
        ("sasr", {"probe_every": -1}, "probe_every"),
        ("sasr", {"ema_decay": 1.0}, "ema_decay"),
        ("sasr", {"warmup_steps": 0}, "warmup_steps"),
        ("sft_then_grpo", {"warmup_steps": 0}, "warmup_steps"),
        ("fixed_ratio", {"p_sft": 1.5}, "p_sft"),
        ("fixed_ratio", {"seed": -1}, "seed"),
    ],
)
def test_parameter_errors_name_the_parameter(kind, kw, name):
    with pytest.raises(ValueError, match=name):
        make_schedule(kind, **{"seed": 0, "warmup_steps": 2, **kw})


def test_unknown_kind_and_bad_step():
    with pytest.raises(ValueError, match="sft, grpo, sft_then_grpo, fixed_ratio, sasr"):
        make_schedule("cosine", seed=0)
    with pytest.raises(ValueError, match="step"):
        make_schedule("sft", seed=0).decide(-1)


# ------------------------------------------------------------------------ one-step mixes


def _mix(**mix):
    return make_schedule("mix", seed=0, warmup_steps=2, mix=mix, total_steps=7)


def test_mix_constant_mu_after_the_warmup():
    s = _mix(mu_start=0.3, mu_end=0.3, decay="constant")
    assert [(s.decide(i).mode, s.decide(i).p_sft) for i in range(4)] == [
        ("sft", 1.0), ("sft", 1.0), ("mix", 0.3), ("mix", 0.3),
    ]  # fmt: skip
    assert not any(s.decide(i).probe for i in range(7))


def test_mix_linear_and_cosine_decay_by_hand():
    # decay_steps 0: over the rest of the run, steps 2..6 (t = 0..4), mu_end on the last one
    lin = _mix(mu_start=0.9, mu_end=0.1, decay="linear")
    assert [lin.decide(i).p_sft for i in range(2, 7)] == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1])
    cos = _mix(mu_start=0.9, mu_end=0.1, decay="cosine")
    # 0.1 + 0.8 * (1 + cos(pi t / 4)) / 2: t = 1 -> 0.1 + 0.4 * (1 + 0.70711) = 0.78284
    assert [cos.decide(i).p_sft for i in range(2, 7)] == pytest.approx(
        [0.9, 0.782843, 0.5, 0.217157, 0.1], abs=1e-6
    )
    # an explicit decay_steps: mu_end from then on
    short = make_schedule(
        "mix", seed=0, warmup_steps=0, total_steps=10,
        mix={"mu_start": 0.8, "mu_end": 0.2, "decay": "linear", "decay_steps": 2},
    )  # fmt: skip
    assert [short.decide(i).p_sft for i in range(5)] == pytest.approx([0.8, 0.5, 0.2, 0.2, 0.2])


def test_a_mix_of_weight_one_or_zero_is_a_plain_step():
    s = make_schedule(
        "mix", seed=0, warmup_steps=0, total_steps=5,
        mix={"mu_start": 1.0, "mu_end": 0.0, "decay": "linear", "decay_steps": 4},
    )  # fmt: skip
    assert [(d.mode, d.p_sft) for d in map(s.decide, range(5))] == [
        ("sft", 1.0), ("mix", 0.75), ("mix", 0.5), ("mix", 0.25), ("grpo", 0.0),
    ]  # fmt: skip


def test_sasr_soft_mixes_with_the_gate_instead_of_drawing():
    s = make_schedule("sasr_soft", seed=0, warmup_steps=2, gamma=1.0)
    assert s.decide(0) == Decision("sft", 1.0) and s.decide(1) == Decision("sft", 1.0)
    s.observe(0, "sft", sft_grad_norm=4.0)
    s.observe(1, "sft", sft_grad_norm=2.0)  # G_warm = 2
    assert s.decide(2) == Decision("mix", pytest.approx(0.5))  # 2 / (2 + 2)
    # the mix step's SFT part measured 6: p = 6 / (6 + 2) = 0.75, and its KL is kept
    s.observe(2, "mix", sft_grad_norm=6.0, kl=0.03)
    assert s.decide(3).mode == "mix" and s.decide(3).p_sft == pytest.approx(0.75)
    assert s.stats()["kl"] == 0.03 and s.grpo_steps == 0
    # every post-warm-up step is a mix: no coin, so no seed dependence
    other = make_schedule("sasr_soft", seed=9, warmup_steps=2, gamma=1.0)
    other.load_state_dict(s.state_dict() | {"kind": "sasr_soft"})
    assert other.decide(3) == s.decide(3)


@pytest.mark.parametrize(
    ("mix", "name"),
    [
        ({"mu_start": 1.5}, "mu_start"),
        ({"mu_end": -0.1}, "mu_end"),
        ({"decay": "exp"}, "decay"),
        ({"decay_steps": -1}, "decay_steps"),
    ],
)
def test_mix_rejects_bad_parameters(mix, name):
    with pytest.raises(ValueError, match=name):
        make_schedule("mix", seed=0, mix=mix, total_steps=5)
