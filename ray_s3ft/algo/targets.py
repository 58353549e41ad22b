"""Which response an SFT step trains on: gold, SSR's self-or-gold, S3FT's three rungs, or SDFT's
paraphrase-or-gold.

SSR (arXiv 2409.04787): train on the base model's own answer when the judge accepts it, else on
the gold answer; staying close to the model's own distribution is what preserves general
ability. S3FT (arXiv 2502.08130) adds a middle rung: the base model's paraphrase of the gold,
if the judge accepts it (docs/methods.md §3). SDFT (arXiv 2402.13669), the S3FT paper's third
baseline, skips the self answer: every gold is paraphrased, and the paraphrase is the target
when accepted, else the gold (docs/methods.md §3). The fractions of each source are one of the three numbers
the S3FT paper reports, hence ``source_fractions``.

A self answer or paraphrase is trained on whole or not at all: one that does not fit the
response budget (``fits``, ``data.max_response_tokens``) is passed over for the next rung, as a
rejected one is, and counted (``too_long_counts``). Gold answers are held to the budget at load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

TARGET_MODES = ("gold", "ssr", "s3ft", "sdft")


class TargetSource(str, Enum):
    SELF = "self"
    PARAPHRASE = "paraphrase"
    GOLD = "gold"


@dataclass(frozen=True)
class Target:
    text: str
    source: TargetSource
    # accepted rungs passed over because they do not fit the response budget
    too_long: tuple[TargetSource, ...] = ()


def _accepted(verdict: bool | None, response: str | None, finished: bool, name: str) -> bool:
    """A verdict counts only when it is True; an undecided judge (None) is a rejection, and so
    is an answer cut at the generation budget: flexible extraction may read its last number as
    the answer, but trained on (with an end-of-turn appended) it would teach the model to stop
    mid-sentence.

    A True verdict on a missing or blank response means the judge was fed something other than
    what we would train on: raise rather than train on an empty target.
    """
    if verdict is None or not verdict:
        return False
    if response is None or not response.strip():
        raise ValueError(f"{name}_ok is True but {name} response is empty or None")
    return finished


def select_target(
    mode: str,
    *,
    gold: str,
    self_response: str | None = None,
    self_ok: bool | None = None,
    paraphrase: str | None = None,
    paraphrase_ok: bool | None = None,
    fits: Callable[[str], bool] | None = None,
    self_finished: bool = True,
    paraphrase_finished: bool = True,
) -> Target:
    """The training target for one (x, y_gold) pair under ``mode`` in TARGET_MODES.

    gold: always y_gold (plain SFT). ssr: y_self if accepted, else y_gold. s3ft: y_self if
    accepted, else y_para if accepted, else y_gold. sdft: y_para if accepted, else y_gold (no
    y_self is read). Accepted: the judge said True and the
    answer ended (``*_finished``: not cut at the generation budget). Only the rungs consulted
    are validated (gold mode reads no verdict), so one judged record serves gold, ssr and s3ft; sdft needs a
    y_para for every example, which an s3ft record has only where y_self was rejected.
    ``fits(text)``: whether a self answer or paraphrase fits the response budget; an accepted
    one that does not is passed over (listed in ``Target.too_long``). None: every one fits.
    """
    if mode not in TARGET_MODES:
        raise ValueError(f"unknown target mode {mode!r}; allowed: {', '.join(TARGET_MODES)}")
    too_long: list[TargetSource] = []
    if mode in ("ssr", "s3ft") and _accepted(self_ok, self_response, self_finished, "self"):
        assert self_response is not None  # checked by _accepted; narrows the type
        if fits is None or fits(self_response):
            return Target(text=self_response, source=TargetSource.SELF)
        too_long.append(TargetSource.SELF)
    if mode in ("s3ft", "sdft") and _accepted(
        paraphrase_ok, paraphrase, paraphrase_finished, "paraphrase"
    ):
        assert paraphrase is not None
        if fits is None or fits(paraphrase):
            return Target(paraphrase, TargetSource.PARAPHRASE, tuple(too_long))
        too_long.append(TargetSource.PARAPHRASE)
    return Target(text=gold, source=TargetSource.GOLD, too_long=tuple(too_long))


def source_fractions(targets: Iterable[Target]) -> dict[str, float]:
    """Share of targets per source, keys "self", "paraphrase", "gold"; all 0.0 when empty."""
    counts = dict.fromkeys((s.value for s in TargetSource), 0)
    for target in targets:
        counts[TargetSource(target.source).value] += 1
    total = sum(counts.values())
    return {k: (v / total if total else 0.0) for k, v in counts.items()}


def too_long_counts(targets: Iterable[Target]) -> dict[str, int]:
    """Accepted self answers and paraphrases passed over for not fitting the response budget,
    keys "self", "paraphrase"."""
    counts = {TargetSource.SELF.value: 0, TargetSource.PARAPHRASE.value: 0}
    for target in targets:
        for source in target.too_long:
            counts[TargetSource(source).value] += 1
    return counts
