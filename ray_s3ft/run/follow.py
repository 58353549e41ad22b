"""Targets that follow the policy (ours): the SFT targets of a run move from the store's
toward the model's own accepted answers as it trains.

- ``algorithm.targets_refresh_every: K``: every K steps the current policy answers again
  (greedy, on the synced engines) every example whose target is a paraphrase or the gold,
  and a seeded share (``targets_refresh_self``) of the self ones, and the judge decides;
- ``algorithm.rehearse_rollouts``: a GRPO sample the judge accepted becomes its prompt's self
  target (the first accepted of its group; the newest step's wins).

An accepted answer must have ended and fit ``data.max_response_tokens``, as in the store. The
store itself is never rewritten (a grid's cells share it, and a checkpoint names its digest):
the run keeps what replaced it in ``TrainState.followed`` (index -> text, step, where from),
which its checkpoints hold, and writes it to ``targets.followed.jsonl`` at the end. The rows'
``targets/*_frac`` follow the split step by step.
"""

from __future__ import annotations

import numpy as np

from ray_s3ft.run.target_store import TargetSource
from ray_s3ft.tasks.types import Example
from ray_s3ft.workers.judge import judge_on
from ray_s3ft.workers.rollout import RolloutWorker
from ray_s3ft.workers.types import JudgeItem


class FollowTargets:
    """The controller's part that keeps the targets now (``Controller`` mixes it in: it uses
    ``cfg``, ``state``, ``targets``, ``examples``, ``g``, ``rewards``, ``sync_weights``)."""

    def self_targets(self) -> list[int]:
        """The examples whose SFT target now is the model's own accepted answer."""
        return [i for i, (_, source) in enumerate(self.target_texts()) if source == "self"]

    def target_texts(self) -> list[tuple[str, str]]:
        """Each example's SFT target now, (text, source): the store's, or the model's own
        accepted answer that replaced it (``algorithm.targets_refresh_every``,
        ``rehearse_rollouts``: ``TrainState.followed``)."""
        f = self.state.followed
        return [
            (f[str(i)]["text"], "self") if str(i) in f else (t.text, TargetSource(t.source).value)
            for i, t in enumerate(self.targets.targets())
        ]

    def target_fractions(self) -> dict[str, float]:
        """The self / paraphrase / gold shares of the targets now."""
        if not self.state.followed:
            return self.fractions
        sources = [source for _, source in self.target_texts()]
        return {k: sources.count(k) / len(sources) for k in ("self", "paraphrase", "gold")}

    def _accepts(self, text: str, finished: bool, correct) -> bool:
        """An answer may become a self target: the judge accepted it, it ended, it fits."""
        fits = self.targets.fits
        return correct is True and finished and (fits is None or fits(text))

    def refresh_targets(self) -> dict:
        """``algorithm.targets_refresh_every``: the current policy answers again (greedy, on the
        synced engines) every example whose target is a paraphrase or the gold, and a seeded
        sample (``targets_refresh_self``) of the self ones; an answer the judge accepts
        becomes that example's self target. A self one answered wrong now keeps its earlier
        accepted answer (still a correct one)."""
        a, step = self.cfg.algorithm, self.state.step
        now = self.target_texts()
        selfs = [i for i, (_, src) in enumerate(now) if src == "self"]
        k = round(a.targets_refresh_self * len(selfs))
        rng = np.random.default_rng([self.cfg.trainer.seed, 3, step])
        extra = rng.choice(selfs, k, replace=False).tolist() if k else []
        picked = sorted([i for i, (_, src) in enumerate(now) if src != "self"] + extra)
        counts = self.state.follow_counts
        counts["refreshes"] += 1
        if not picked:
            return {"targets/refresh_asked": 0, "targets/refresh_accepted": 0}
        self.sync_weights()
        exs = [self.examples[i] for i in picked]
        answers = self.g.rollout.map(
            RolloutWorker.answers, [e.prompt for e in exs],
            max_new_tokens=self.cfg.rollout.max_new_tokens,
        )  # fmt: skip
        items = [
            JudgeItem(e.prompt, ans.text, e.answer, e.verifier, tuple(e.tests))
            for e, ans in zip(exs, answers, strict=True)
        ]
        verdicts = judge_on(self.g.judge, items, self.cfg.judge.timeout_s)[0]
        accepted = 0
        for i, ans, v in zip(picked, answers, verdicts, strict=True):
            if self._accepts(ans.text, ans.finished, v.correct):
                self.state.followed[str(i)] = {"text": ans.text, "step": step, "from": "refresh"}
                accepted += 1
        counts["asked"] += len(picked)
        counts["accepted"] += accepted
        return {"targets/refresh_asked": len(picked), "targets/refresh_accepted": accepted}

    def rehearse_rollouts(self, examples: list[Example], gens) -> int:
        """``algorithm.rehearse_rollouts``: a prompt's GRPO sample that the judge accepted
        (the first of its group; ended, within budget) becomes its self target; the newest
        step's wins. Returns how many prompts got one."""
        if self._index is None:
            self._index = {ex.id: i for i, ex in enumerate(self.examples)}
        size, n = self.cfg.algorithm.grpo.group_size, 0
        for p, ex in enumerate(examples):
            for g in gens[p * size : (p + 1) * size]:
                if self._accepts(g.text, g.finished, self.rewards.correct.get(id(g))):
                    entry = {"text": g.text, "step": self.state.step, "from": "rollout"}
                    self.state.followed[str(self._index[ex.id])] = entry
                    n += 1
                    break
        self.state.follow_counts["rollouts"] += n
        return n
