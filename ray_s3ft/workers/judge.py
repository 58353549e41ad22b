"""JudgeWorker: routes each (prompt, response, answer) to its verifier and returns a Verdict.

Verifiers: the built-in task's step check, math answers (math-verify), Python code run against
its tests in the sandbox (the only place model-written code ever runs), and an LLM judge with its
own engine (by default the run's base model, as in S3FT, arXiv 2502.08130; it stays frozen, so it
never needs the trained weights). A verifier that raises, times out or cannot be parsed gives
``Verdict(None)``: counted by the caller, never a crash of the run.

An LLM judge's prompt (the question, the reference and the candidate) is never cut to fit its
engine: a cut prompt loses the instructions at its start. One longer than the engine takes
(``model.max_model_len`` less ``judge.llm_max_new_tokens``) is undecided, and logged with the count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ray_s3ft.config import JudgeConfig, RolloutConfig
from ray_s3ft.verifiers.code import extract_code
from ray_s3ft.verifiers.registry import RULE_BASED, rule_verdict
from ray_s3ft.workers.types import JudgeItem, Verdict

log = logging.getLogger(__name__)


class JudgeWorker:
    def __init__(self, cfg: JudgeConfig, max_model_len: int = 2048) -> None:
        """``cfg`` must be resolved (``config.resolved_judge``): no "auto", no "base"."""
        self.cfg = cfg
        self.max_model_len = max_model_len
        # the judge's prompt: whatever its engine's context leaves beside the verdict it writes
        self.max_prompt_tokens = max_model_len - cfg.llm_max_new_tokens
        self._llm = None  # the LLM judge's engine, started on first use

    def judge(self, items: Sequence[JudgeItem], by_item: bool = False) -> list[Verdict]:
        """One verdict per item, in order. Items are routed by their own verifier, except that
        ``judge.verifier=llm`` sends every item to the LLM judge and ``steps`` takes the math
        items (the built-in task's step-by-step check). ``by_item``: every item by its own
        verifier, whatever ``judge.verifier`` says (evaluation: each example's own metric)."""
        verdicts: list[Verdict | None] = [None] * len(items)
        llm_idx = []
        for i, item in enumerate(items):
            kind = item.verifier
            if not by_item and (
                self.cfg.verifier == "llm" or (self.cfg.verifier == "steps" and kind == "math")
            ):
                kind = self.cfg.verifier
            if kind == "llm":
                llm_idx.append(i)
            else:
                verdicts[i] = self._rule_verdict(item, kind)
        for start in range(0, len(llm_idx), self.cfg.batch_size):
            chunk = llm_idx[start : start + self.cfg.batch_size]
            for i, v in zip(chunk, self._llm_verdicts([items[i] for i in chunk]), strict=True):
                verdicts[i] = v
        return [v if v is not None else Verdict(None, "not judged") for v in verdicts]

    def _rule_verdict(self, item: JudgeItem, kind: str) -> Verdict:
        try:
            if kind == "code":
                from ray_s3ft.verifiers.sandbox import SandboxLimits, run_python_tests

                limits = SandboxLimits(
                    wall_timeout_s=self.cfg.sandbox_timeout_s,
                    cpu_time_s=max(1, int(self.cfg.sandbox_timeout_s)),
                    memory_mb=self.cfg.sandbox_memory_mb,
                )
                result = run_python_tests(extract_code(item.response), list(item.tests), limits)
                if result.status == "timeout":
                    return Verdict(None, "sandbox timeout")
                return Verdict(result.passed, result.status)
            if kind not in RULE_BASED:
                return Verdict(None, f"no verifier {kind!r}")
            ok = rule_verdict(kind, item.prompt, item.response, item.answer, self.cfg.math_extract)
            return Verdict(ok, "" if ok is not None else "no final answer found")
        except Exception as e:  # a verifier bug must cost one verdict, not the run
            log.warning("judge: %s verifier failed: %s: %s", kind, type(e).__name__, e)
            return Verdict(None, f"{kind} verifier error: {type(e).__name__}")

    def _llm_verdicts(self, items: list[JudgeItem]) -> list[Verdict]:
        from ray_s3ft.verifiers.llm_judge import build_judge_prompt

        prompts = [build_judge_prompt(it.prompt, it.answer, it.response) for it in items]
        try:
            too_long = self._engine().prompts_cut(prompts)
            fit = [p for p, cut in zip(prompts, too_long, strict=True) if not cut]
            if any(too_long):
                log.warning(
                    "judge: %d of %d LLM-judge prompts are longer than %d tokens "
                    "(model.max_model_len - judge.llm_max_new_tokens): undecided, not cut",
                    sum(too_long), len(prompts), self.max_prompt_tokens,
                )  # fmt: skip
            if not fit:
                judged = []
            elif self.cfg.llm_mode == "loglik":
                judged = self._loglik_verdicts(fit)
            else:
                texts = self._engine().greedy(fit, self.cfg.llm_max_new_tokens)
                judged = [_parsed(text) for text in texts]
        except Exception as e:
            log.warning("judge: LLM judge failed on %d items: %s", len(items), e)
            return [Verdict(None, f"llm judge error: {type(e).__name__}")] * len(items)
        verdicts = iter(judged)
        return [
            Verdict(None, "judge prompt too long") if cut else next(verdicts) for cut in too_long
        ]

    def _loglik_verdicts(self, prompts: list[str]) -> list[Verdict]:
        """``judge.llm_mode=loglik``: the verdict the judge model finds likelier as its whole
        reply, "Verdict: correct" or "Verdict: incorrect" (a choice between the two, scored
        as lm-evaluation-harness scores multiple choice). A small model that would not write a
        clean verdict line still ranks the two; a tie is undecided."""
        from ray_s3ft.verifiers.llm_judge import VERDICT_CORRECT, VERDICT_INCORRECT

        pairs = [(p, v) for p in prompts for v in (VERDICT_CORRECT, VERDICT_INCORRECT)]
        lps = self._engine().loglikelihoods(pairs)
        out = []
        for yes, no in zip(lps[0::2], lps[1::2], strict=True):
            ok = None if yes == no else yes > no
            out.append(Verdict(ok, f"log-likelihood margin {yes - no:+.3f}"))
        return out

    def _engine(self):
        if self._llm is None:
            from ray_s3ft.workers.rollout import RolloutWorker

            # The judge's engine is a rollout engine that only ever decodes greedily.
            cfg = RolloutConfig(backend=self.cfg.llm_backend, temperature=0.0)
            self._llm = RolloutWorker(
                self.cfg.llm_model, cfg, self.max_model_len, self.max_prompt_tokens
            )
        return self._llm


def _parsed(text: str) -> Verdict:
    from ray_s3ft.verifiers.llm_judge import parse_verdict

    ok = parse_verdict(text)
    return Verdict(ok, "" if ok is not None else "unparseable verdict")


def judge_on(group, items: Sequence[JudgeItem], timeout_s: float | None, **kw) -> tuple[list, int]:
    """Verdicts of ``items`` from a group of judge workers, in order, and how many of them
    timed out: an actor's share past ``timeout_s`` is undecided (``Verdict(None)``) and that
    actor is restarted (``ActorGroup.map_chunks``). ``kw`` goes to ``JudgeWorker.judge``."""
    from ray_s3ft.workers.group import split_evenly

    chunks = [c for c in split_evenly(list(items), len(group)) if c]
    parts = group.map_chunks(JudgeWorker.judge, items, timeout_s=timeout_s, **kw)
    verdicts, late = [], 0
    for chunk, part in zip(chunks, parts, strict=True):
        if part is None:
            late += len(chunk)
            log.warning(
                "judge: %d verdicts took longer than judge.timeout_s=%s s: undecided",
                len(chunk), timeout_s,
            )  # fmt: skip
            part = [Verdict(None, "judge timeout")] * len(chunk)
        verdicts.extend(part)
    return verdicts, late
