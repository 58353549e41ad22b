"""The S3FT target store: the rungs, crash-safe resumption and reuse.

The engines are plain functions here (the real rollout and judge actors build the store in
tests/e2e/test_train_e2e.py); these tests pin the bookkeeping: what is asked, what is kept.
"""

import json

import pytest

from ray_s3ft.config import ConfigError
from ray_s3ft.run.target_store import PARTIAL, STORE, build_targets
from ray_s3ft.tasks.types import Example
from ray_s3ft.workers.types import Answer, Verdict

# answer 1: the model's own answer is right; 2: only its paraphrase is; 3: neither
EXAMPLES = [
    Example(f"e{i}", "arith", f"q{i}", f"gold {i % 3 + 1}", str(i % 3 + 1)) for i in range(9)
]


class Engines:
    def __init__(self, fail_after=None):
        self.asked, self.paraphrased, self.fail_after = [], [], fail_after

    def greedy(self, prompts, n):
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise RuntimeError("engine died")
        self.asked += prompts
        return [Answer(f"self of {p}", True) for p in prompts]

    def paraphrase(self, pairs, n):
        self.paraphrased += [q for q, _ in pairs]
        return [Answer(f"para of {q}", True) for q, _ in pairs]

    def judge(self, items):
        def ok(it):
            ans = next(e.answer for e in EXAMPLES if e.prompt == it.prompt)
            return (ans == "1") if it.response.startswith("self") else (ans == "2")

        return [Verdict(ok(it)) for it in items]


def _build(tmp_path, engines, mode="s3ft", fingerprint=None, chunk_size=3, force=False):
    return build_targets(
        EXAMPLES, tmp_path, mode=mode, fingerprint=fingerprint or {"model": "m"},
        greedy=engines.greedy, paraphrase=engines.paraphrase, judge=engines.judge,
        max_new_tokens=8, chunk_size=chunk_size, force=force,
    )  # fmt: skip


def test_three_rungs_and_their_fractions(tmp_path):
    e = Engines()
    result = _build(tmp_path, e)
    sources = [t.source.value for t in result.targets()]
    assert sources == ["self", "paraphrase", "gold"] * 3
    assert result.fractions() == pytest.approx({"self": 1 / 3, "paraphrase": 1 / 3, "gold": 1 / 3})
    assert result.targets()[1].text == "para of q1" and result.targets()[2].text == "gold 3"
    assert len(e.paraphrased) == 6  # only the rejected self answers are paraphrased
    assert result.computed == 9 and not (tmp_path / PARTIAL).exists()


def test_ssr_never_paraphrases_and_gold_never_asks(tmp_path):
    e = Engines()
    ssr = _build(tmp_path / "ssr", e, mode="ssr")
    assert [t.source.value for t in ssr.targets()] == ["self", "gold", "gold"] * 3
    assert e.paraphrased == []
    e = Engines()
    gold = _build(tmp_path / "gold", e, mode="gold")
    assert e.asked == [] and all(t.source.value == "gold" for t in gold.targets())


def test_sdft_paraphrases_every_gold_and_never_asks_for_a_self_answer(tmp_path):
    e = Engines()
    sdft = _build(tmp_path, e, mode="sdft")
    # answer 1's self answer is right, but SDFT has no self rung: its paraphrase is wrong -> gold
    assert [t.source.value for t in sdft.targets()] == ["gold", "paraphrase", "gold"] * 3
    assert sdft.targets()[1].text == "para of q1"
    assert e.asked == [] and e.paraphrased == [ex.prompt for ex in EXAMPLES]
    assert sdft.fractions() == pytest.approx({"self": 0.0, "paraphrase": 1 / 3, "gold": 2 / 3})
    assert all(r.self_response is None for r in sdft.records)
    assert sdft.undecided() == {"self": 0, "paraphrase": 0}
    # the mode is in the fingerprint: an s3ft store (paraphrases only where y_self was
    # rejected) is not read as an sdft one
    with pytest.raises(ConfigError, match=r'mode: "sdft" -> "s3ft"'):
        _build(tmp_path, Engines(), mode="s3ft")


def test_a_finished_store_is_reused_not_recomputed(tmp_path):
    _build(tmp_path, Engines())
    mtime = (tmp_path / STORE).stat().st_mtime_ns
    e = Engines()
    again = _build(tmp_path, e)
    assert e.asked == [] and again.computed == 0 and again.reused == 9
    assert (tmp_path / STORE).stat().st_mtime_ns == mtime


def test_an_interrupted_build_resumes_from_its_last_chunk(tmp_path):
    with pytest.raises(RuntimeError, match="engine died"):
        _build(tmp_path, Engines(fail_after=6))  # chunks of 3: two chunks land, the third dies
    with open(tmp_path / PARTIAL, "a") as f:
        f.write('{"id": "e6", "prom')  # and the crash cut a line short
    e = Engines()
    result = _build(tmp_path, e)
    assert e.asked == ["q6", "q7", "q8"]
    assert result.computed == 3 and result.reused == 6
    assert [json.loads(x)["id"] for x in (tmp_path / STORE).read_text().splitlines()] == [
        f"e{i}" for i in range(9)
    ]


def test_a_store_of_another_setting_is_refused_naming_the_key_and_force_rebuilds_it(tmp_path):
    from ray_s3ft.config import ConfigError

    _build(tmp_path, Engines())
    e = Engines()
    with pytest.raises(ConfigError, match=r'targets.jsonl: .*model: "m" -> "another".*--force'):
        _build(tmp_path, e, fingerprint={"model": "another"})
    assert e.asked == []  # nothing rebuilt, nothing deleted
    assert len((tmp_path / STORE).read_text().splitlines()) == 9
    result = _build(tmp_path, e, fingerprint={"model": "another"}, force=True)
    assert result.computed == 9 and len(e.asked) == 9
    assert _build(tmp_path, Engines(), fingerprint={"model": "another"}).computed == 0


def test_a_partial_store_of_another_setting_is_refused(tmp_path):
    from ray_s3ft.config import ConfigError

    with pytest.raises(RuntimeError, match="engine died"):
        _build(tmp_path, Engines(fail_after=3))
    with pytest.raises(ConfigError, match=r"targets.partial.jsonl: .*model.*--force"):
        _build(tmp_path, Engines(), fingerprint={"model": "another"})


def test_a_paraphrase_right_by_its_answer_alone_falls_to_gold_under_the_working_rule(tmp_path):
    from ray_s3ft.verifiers.math import keeps_working

    gold = "After losing 3, Lily has 10-3=7 coins.\n#### 7"
    examples = [
        Example(f"w{i}", "gsm8k", "Lily has 10 coins. She loses 3.", gold, "7") for i in range(2)
    ]
    replies = {"w0": "The answer is 7.", "w1": "Lily had 10 and lost 3, so 10 - 3 = 7 coins."}

    def paraphrase(pairs, n):  # both ids share a prompt: answer in order
        return [Answer(replies["w0"], True), Answer(replies["w1"], True)][: len(pairs)]

    def build(rule, out):
        return build_targets(
            examples, out, mode="s3ft", fingerprint={"rule": rule is not None},
            greedy=lambda prompts, n: [Answer("I do not know.", True)] * len(prompts),
            paraphrase=paraphrase,
            judge=lambda items: [Verdict("7" in it.response) for it in items],
            max_new_tokens=8, keeps_working=rule,
        )  # fmt: skip

    plain = build(None, tmp_path / "plain")
    assert [t.source.value for t in plain.targets()] == ["paraphrase", "paraphrase"]
    ruled = build(lambda ex, p: keeps_working(p, ex.gold), tmp_path / "ruled")
    assert [t.source.value for t in ruled.targets()] == ["gold", "paraphrase"]
    assert ruled.targets()[0].text == gold and ruled.records[0].paraphrase_ok is False


def test_a_store_with_a_response_budget_trains_on_gold_instead_of_what_does_not_fit(tmp_path):
    import dataclasses

    result = _build(tmp_path, Engines())
    # "self of q0" is 10 characters, "para of q1" 10: a budget of 9 passes over both
    short = dataclasses.replace(result, fits=lambda text: len(text) <= 9)
    assert [t.source.value for t in short.targets()] == ["gold"] * 9
    assert short.too_long() == {"self": 3, "paraphrase": 3}
    assert short.fractions() == {"self": 0.0, "paraphrase": 0.0, "gold": 1.0}
    assert short.digest() != result.digest()  # a checkpoint of one is not resumed on the other
    assert result.too_long() == {"self": 0, "paraphrase": 0}


def test_a_cut_answer_the_judge_accepts_is_never_a_target_and_is_counted(tmp_path):
    # e0: y_self cut at the budget after "... so 3 + 4 = 7": flexible extraction reads 7 and the
    # judge accepts it, but it is cut -> rejected, paraphrased; y_para is cut too -> gold.
    # e1: y_self cut and wrong -> paraphrased; y_para ends and is right -> paraphrase.
    # e2: y_self ends and is right -> self.
    examples = [Example(f"e{i}", "arith", f"q{i}", f"gold {i}", "7") for i in range(3)]
    selfs = {
        "q0": Answer("First 3 + 4 = 7, then we multiply by", False),
        "q1": Answer("First 3 + 4 = 8, then", False),
        "q2": Answer("3 + 4 = 7. The answer is 7.", True),
    }
    paras = {"q0": Answer("We add 3 and 4 to get 7, and then", False),
             "q1": Answer("3 + 4 = 7.", True), "q2": Answer("Adding gives 7.", True)}  # fmt: skip
    asked = []

    def paraphrase(pairs, n):
        asked.extend(q for q, _ in pairs)
        return [paras[q] for q, _ in pairs]

    def build(mode):
        return build_targets(
            examples, tmp_path / mode, mode=mode, fingerprint={},
            greedy=lambda prompts, n: [selfs[p] for p in prompts], paraphrase=paraphrase,
            judge=lambda items: [Verdict(" 7" in it.response) for it in items],
            max_new_tokens=8,
        )  # fmt: skip

    s3ft = build("s3ft")
    assert [t.source.value for t in s3ft.targets()] == ["gold", "paraphrase", "self"]
    assert [t.text for t in s3ft.targets()] == ["gold 0", "3 + 4 = 7.", selfs["q2"].text]
    assert asked == ["q0", "q1"]  # the accepted but cut y_self of q0 needs the next rung
    assert s3ft.records[0].self_ok is True and s3ft.records[0].self_finished is False
    assert s3ft.unfinished() == {
        "self": 2, "self_rejected": 1, "paraphrase": 1, "paraphrase_rejected": 1
    }  # fmt: skip
    assert s3ft.fractions() == pytest.approx({"self": 1 / 3, "paraphrase": 1 / 3, "gold": 1 / 3})
    # read back from disk, the store keeps the flags
    again = build("s3ft")
    assert again.computed == 0 and again.unfinished() == s3ft.unfinished()
    ssr = build("ssr")
    assert [t.source.value for t in ssr.targets()] == ["gold", "gold", "self"]
    assert ssr.unfinished() == {
        "self": 2, "self_rejected": 1, "paraphrase": 0, "paraphrase_rejected": 0
    }  # fmt: skip
    # sdft: q0's accepted but cut paraphrase is gold, the two finished ones are targets
    sdft = build("sdft")
    assert [t.source.value for t in sdft.targets()] == ["gold", "paraphrase", "paraphrase"]
    assert sdft.unfinished() == {
        "self": 0, "self_rejected": 0, "paraphrase": 1, "paraphrase_rejected": 1
    }  # fmt: skip


def test_a_store_built_before_cut_answers_were_recorded_is_refused_and_force_rebuilds(tmp_path):
    _build(tmp_path, Engines())
    meta = json.loads((tmp_path / "targets.meta.json").read_text())
    del meta["format"]  # as written before the format key
    (tmp_path / "targets.meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="format"):
        _build(tmp_path, Engines())
    e = Engines()
    assert _build(tmp_path, e, force=True).computed == 9 and len(e.asked) == 9
