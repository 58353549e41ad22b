"""Where a GRPO step's samples come from: the data order, the engines' weights, and a sampler.

``Sampler.next(step, state, timer)`` returns a step's examples, their generations and their
staleness (learner versions between the weights that sampled them and the current ones: one
version per train step, which is ``algorithm.grpo.updates_per_batch`` optimizer steps for GRPO).
``SyncSampler`` samples now, with the current weights. ``AsyncSampler`` (``rollout.async``)
also starts the next GRPO batch before the learners train on this one
(``prefetch``), and serves it at the next step when it is fresh enough, so the engines generate
while the learners train. The controller calls the same methods of either.

``WeightSync`` (``run/weight_sync.py``) brings the engines to the learner's version lazily,
right before they generate.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np

from ray_s3ft.config import Config
from ray_s3ft.run.weight_sync import WeightSync
from ray_s3ft.tasks.types import Example
from ray_s3ft.timing import Timer
from ray_s3ft.workers.group import ActorDied, ActorGroup
from ray_s3ft.workers.rollout import RolloutWorker
from ray_s3ft.workers.types import Generation, RolloutResult, Sampling

log = logging.getLogger(__name__)


def rollout_seed(run_seed: int, step: int, example: int, round: int = 0) -> int:
    """The sampling seed of one prompt's group at one step (sample k draws from seed + k);
    ``round`` > 0: a dynamic-sampling round's (``Rewards.refill``)."""
    key = [run_seed, step, example] + ([round] if round else [])
    words = np.random.SeedSequence(key).generate_state(1)
    return int(words[0]) >> 2  # room for + k within vLLM's 32-bit range


def data_order(kind: str, size: int, cursor: int, n: int, seed: int) -> list[int]:
    """Example indices ``cursor`` .. ``cursor + n - 1`` of stream ``kind`` (``sft``, ``grpo``
    or ``rehearse``, the forgetting budget's self targets) over ``size`` examples: a fresh
    seeded permutation per epoch, so a resumed run (which restores the cursor) sees the same
    data."""
    salt = {"sft": 0, "grpo": 1}.get(kind, 2)
    perms: dict[int, np.ndarray] = {}
    out = []
    for pos in range(cursor, cursor + n):
        epoch, offset = divmod(pos, size)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, salt, epoch]).permutation(size)
        out.append(int(perms[epoch][offset]))
    return out


def sample_digest(gens) -> int:
    """A 48-bit hash of every sampled token id of a step (exact in JSON and in float64):
    two runs that sampled the same tokens log the same digest."""
    import hashlib

    h = hashlib.sha256()
    for g in gens:
        h.update(np.asarray(g.token_ids, dtype=np.int64).tobytes() + b"|")
    return int(h.hexdigest()[:12], 16)


@dataclass
class GRPOStats:
    """The latest GRPO step's rollout, judge and reward figures, as every metrics row reports
    them (zeros before the first GRPO step). A checkpoint keeps them."""

    reward_mean: float = 0.0
    zero_std_groups: int = 0
    undecided: int = 0
    undecided_frac: float = 0.0
    unfinished: float = 0.0  # share of samples cut at rollout.max_new_tokens
    tokens_per_s: float = 0.0
    response_tokens: float = 0.0
    sample_digest: int = 0
    staleness: int = 0
    discarded: int = 0  # prefetched rollouts not used, over the run so far
    dynamic_rounds: int = 0
    dynamic_dropped: int = 0

    # the metrics row's key of each field
    KEYS = {
        "reward_mean": "reward/mean",
        "zero_std_groups": "reward/zero_std_groups",
        "undecided": "judge/undecided",
        "undecided_frac": "judge/undecided_frac",
        "unfinished": "rollout/unfinished",
        "tokens_per_s": "rollout/tokens_per_s",
        "response_tokens": "rollout/response_tokens",
        "sample_digest": "rollout/sample_digest",
        "staleness": "rollout/staleness",
        "discarded": "rollout/discarded",
        "dynamic_rounds": "rollout/dynamic_rounds",
        "dynamic_dropped": "rollout/dynamic_dropped",
    }

    def key(self, name: str) -> tuple[str, float]:
        return self.KEYS[name], getattr(self, name)

    @classmethod
    def from_json(cls, d: dict) -> GRPOStats:
        """From a checkpoint's record: field names, or the metrics keys older ones used."""
        by_key = {v: k for k, v in cls.KEYS.items()}
        names = {f.name for f in fields(cls)}
        return cls(**{by_key.get(k, k): v for k, v in d.items() if by_key.get(k, k) in names})


@dataclass
class Prefetch:
    """A rollout started one step early (``rollout.async``)."""

    futures: list  # RolloutResult futures (one per engine chunk), then the weight transfer's
    results: int  # how many of the futures are RolloutResults
    cursor: int  # the GRPO data cursor its batch starts at
    version: int  # the weights version it samples with
    started: float  # perf_counter at launch
    done: list | None = None  # its RolloutResults once waited for (a checkpoint saves them)


class SyncSampler:
    """Samples each GRPO step's groups when the step asks, with the current weights."""

    def __init__(self, cfg: Config, rollout: ActorGroup, weights: WeightSync, examples):
        self.cfg, self.rollout, self.weights = cfg, rollout, weights
        self.examples: list[Example] = examples

    # what the controller calls, in the order a GRPO step does

    def next(self, step: int, state, timer: Timer):
        """This step's (examples, generations, staleness); the GRPO cursor moves past them."""
        idx, examples, items = self.request(step, state)
        state.cursors["grpo"] += len(idx)
        return examples, self.sample_now(items, state, timer), 0

    def more(self, step: int, state, timer: Timer, n: int, round: int):
        """``n`` more groups with the current weights (a dynamic-sampling round)."""
        _, examples, items = self.request(step, state, n, round)
        state.cursors["grpo"] += len(examples)
        timer.run("sync", self.weights.to, state.version)
        parts, _ = timer.run("rollout", self._sample, items, state)
        return examples, [g for p in parts for g in p.generations]

    def prefetch(self, step: int, state, next_is_grpo: Callable[[], bool], timer: Timer) -> None:
        """Nothing to start early: the next GRPO step samples when it comes."""

    @property
    def busy(self) -> bool:
        """Whether the engines are generating for a later step (asking them would wait)."""
        return False

    def drain(self) -> None:
        """Wait for generations nobody will use (the engines idle again)."""

    def discard(self) -> None:
        """After a fault: drop what is in flight; a call that died with an actor is not waited
        for."""
        with contextlib.suppress(ActorDied):
            self.drain()

    def pending_record(self) -> dict | None:
        return None

    def restore(self, record: dict | None) -> None:
        if record is not None:
            log.warning("the checkpoint holds a prefetched rollout; rollout.async=false drops it")

    # the parts

    def request(self, step: int, state, n: int | None = None, round: int = 0):
        """The next ``n`` (default: a GRPO batch's) example indices (the cursor is not moved),
        their examples and the (prompt, seed) items to sample for ``step``."""
        c = self.cfg
        n = c.trainer.grpo_prompts_per_step if n is None else n
        idx = data_order("grpo", len(self.examples), state.cursors["grpo"], n, c.trainer.seed)
        examples = [self.examples[i] for i in idx]
        seed = c.trainer.seed
        items = [(ex.prompt, rollout_seed(seed, step, i, round)) for ex, i in zip(examples, idx)]
        return idx, examples, items

    def sampling(self) -> Sampling:
        c = self.cfg
        return Sampling(
            n=c.algorithm.grpo.group_size,
            temperature=c.rollout.temperature,
            top_p=c.rollout.top_p,
            max_new_tokens=c.rollout.max_new_tokens,
        )

    def sample_now(self, items, state, timer: Timer) -> list[Generation]:
        timer.run("sync", self.weights.to, state.version)
        parts, seconds = timer.run("rollout", self._sample, items, state)
        return generations(parts, seconds, state.grpo)

    def _sample(self, items, state):
        for _ in range(3):
            started = time.perf_counter()
            parts = self.rollout.map_chunks(RolloutWorker.sample, items, sampling=self.sampling())
            seconds = time.perf_counter() - started
            stale = [p.weights_version for p in parts if p.weights_version != state.version]
            if not stale:
                return parts, seconds
            # a restarted engine came back with the base weights: resync it and sample again
            log.warning("engine versions %s, expected %d: resyncing", stale, state.version)
            self.weights.version = -1
            self.weights.to(state.version)
        raise RuntimeError("rollout engines keep losing their weights; see the actor logs")


class AsyncSampler(SyncSampler):
    """``rollout.async``: one-step off-policy. While the learners train on a GRPO batch, the
    engines sample the next one with the weights before that update; the next GRPO step uses
    it when it starts at that step's cursor and is at most ``rollout.max_staleness`` versions
    (train steps) old, else samples now."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.pending: Prefetch | None = None

    def next(self, step: int, state, timer: Timer):
        cursor = state.cursors["grpo"]
        idx, examples, items = self.request(step, state)
        state.cursors["grpo"] += len(idx)
        p, self.pending = self.pending, None
        if p is not None:
            done = p.done
            if done is None:
                done = timer.run("rollout", self.rollout.wait, p.futures)  # the exposed wait
            parts = done[: p.results]
            staleness = state.version - p.version
            fresh = p.cursor == cursor and 0 <= staleness <= self.cfg.rollout.max_staleness
            if fresh and all(part.weights_version == p.version for part in parts):
                return (
                    examples,
                    generations(parts, time.perf_counter() - p.started, state.grpo),
                    staleness,
                )
            state.grpo.discarded += 1
        return examples, self.sample_now(items, state, timer), 0

    def prefetch(self, step: int, state, next_is_grpo: Callable[[], bool], timer: Timer) -> None:
        """Before step ``step`` trains, start sampling the next GRPO batch with the current
        weights: only when the schedule's next step is GRPO (as far as it can tell now)."""
        timer.run("prefetch", self._prefetch, step, state, next_is_grpo)

    def _prefetch(self, step: int, state, next_is_grpo: Callable[[], bool]) -> None:
        if not next_is_grpo() or step + 1 >= self.cfg.trainer.max_steps:
            return
        synced = self.weights.to(state.version, wait=False)  # overlaps the learners' step too
        _, _, items = self.request(step + 1, state)
        futures = self.rollout.submit_chunks(RolloutWorker.sample, items, sampling=self.sampling())
        self.pending = Prefetch(
            futures + synced, len(futures), state.cursors["grpo"], state.version,
            time.perf_counter(),
        )  # fmt: skip

    @property
    def busy(self) -> bool:
        return self.pending is not None

    def drain(self) -> None:
        p, self.pending = self.pending, None
        if p is not None and p.done is None:
            self.rollout.wait(p.futures)

    def pending_record(self) -> dict | None:
        """The prefetched rollout in flight, waited for and made JSON-plain: a checkpoint holds
        it, so a resumed run trains its next GRPO step on the same stale samples as a run that
        never stopped."""
        p = self.pending
        if p is None:
            return None
        if p.done is None:
            p.done = self.rollout.wait(p.futures)
        return {
            "parts": [asdict(part) for part in p.done[: p.results]],
            "cursor": p.cursor,
            "version": p.version,
            "seconds": time.perf_counter() - p.started,
        }

    def restore(self, record: dict | None) -> None:
        self.pending = None
        if record is None:
            return
        parts = [
            RolloutResult(**{**r, "generations": [Generation(**g) for g in r["generations"]]})
            for r in record["parts"]
        ]
        started = time.perf_counter() - record["seconds"]
        self.pending = Prefetch([], len(parts), record["cursor"], record["version"], started, parts)


def make_sampler(cfg: Config, rollout: ActorGroup, weights: WeightSync, examples):
    return (AsyncSampler if cfg.rollout.async_ else SyncSampler)(cfg, rollout, weights, examples)


def generations(parts: list[RolloutResult], seconds: float, stats: GRPOStats) -> list[Generation]:
    """The generations of a rollout's parts, in order; its throughput goes to ``stats``."""
    gens = [g for p in parts for g in p.generations]
    tokens = sum(p.new_tokens for p in parts)
    stats.tokens_per_s = tokens / max(seconds, 1e-9)
    stats.response_tokens = tokens / max(len(gens), 1)
    stats.sample_digest = sample_digest(gens)
    return gens
