"""A run's launched world, and what every run does with it before and after training.

``Session.open(cfg)`` checks what can be checked before any actor starts (paths, data, the
cluster's resources), starts or joins Ray and launches the role groups. The session then
holds the config, the run directory, the model, the data and the groups; ``ray-s3ft train``
runs one training run on it, ``ray-s3ft compare`` a grid of cells on the same actors.
``close()`` (or leaving a ``with`` block) stops the groups, and Ray if the session started it.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray_s3ft.config import Config, resolved_judge, save_config
from ray_s3ft.console import say


@dataclass
class Session:
    cfg: Config
    run_dir: Path
    model_path: str
    examples: list  # the training examples
    eval_sets: dict  # name -> examples: the task's test split, the held-out suites, drift
    tokenizer: Any
    groups: Any  # cluster.Groups
    local_ray: Any  # cluster.LocalRay: the local Ray this session started (and stops), or None

    @classmethod
    def open(cls, cfg: Config, learners: bool = True) -> Session:
        """Everything before the actors start is checked first (paths, data, cluster), so a
        bad input costs seconds, not a launch. ``learners=False``: no learner group (a run
        that only builds the S3FT targets)."""
        from rich.markup import escape

        from ray_s3ft.model.encoding import load_tokenizer
        from ray_s3ft.model.paths import resolve_model_path
        from ray_s3ft.run.cluster import launch, log_dir, start_ray
        from ray_s3ft.run.preflight import check_before_ray, check_cluster
        from ray_s3ft.tasks.data_report import prompt_token_counter, response_token_counter
        from ray_s3ft.tasks.loaders import load_run_data

        check_before_ray(cfg)  # model path, output directory, RAY_ADDRESS
        run_dir = Path(cfg.trainer.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

        # a model to fetch (minutes, once) is fetched first, where Ctrl-C stops it at once
        model_path = resolve_model_path(cfg.model.path)

        def read():
            tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
            examples, eval_sets = load_run_data(  # bad data stops here, with data_report.json
                cfg, run_dir, count_tokens=prompt_token_counter(tokenizer),
                count_response_tokens=response_token_counter(tokenizer), with_eval=learners,
                say=lambda line: say(escape(line)),
            )  # fmt: skip
            return tokenizer, examples, eval_sets

        # Ray starts while the model's tokenizer and the data are read (seconds each on a
        # small machine, one core each); bad data stops the run before any actor starts, and
        # the Ray this started with it. Ray itself starts on the main thread (signal handlers).
        local_ray = None
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="ray-s3ft-read") as pool:
                reading = pool.submit(read)
                try:
                    local_ray = start_ray(cfg, run_dir)
                finally:  # the data's own error, if any, is the one shown
                    tokenizer, examples, eval_sets = reading.result()
            # resources it lacks: an error, or a wait of resources.wait_for_resources_s for nodes
            # that join late (an autoscaling cluster), with a line on what is missing
            check_cluster(cfg, learners=learners, say=lambda line: say(escape(line)))
            groups = launch(cfg, model_path, learners=learners, log_dir=log_dir(run_dir))
        except BaseException:
            if local_ray is not None:
                local_ray.stop()
            raise
        return cls(cfg, run_dir, model_path, examples, eval_sets, tokenizer, groups, local_ray)

    def close(self) -> None:
        self.groups.shutdown()
        if self.local_ray is not None:
            self.local_ray.stop()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_drift(self) -> None:
        """The ``drift`` eval set, with ``eval.drift`` (``with_drift``): call before any
        weight sync, while the engines serve the base weights."""
        self.eval_sets = with_drift(
            self.cfg, self.groups, self.eval_sets, self.run_dir, self.model_path
        )

    def evaluate(
        self, cfg: Config | None = None, eval_sets: dict | None = None, items: bool = False
    ) -> dict:
        """Every eval set (default: all of the session's) on the rollout engines, with the
        options of ``cfg`` (default: the session's); ``items``: with each question's verdict
        (``evaluate_on_engines``)."""
        cfg = cfg or self.cfg
        sets = self.eval_sets if eval_sets is None else eval_sets
        return evaluate_on_engines(
            self.groups, sets, cfg.eval.max_new_tokens, items=items, **eval_options(cfg)
        )

    def model_identity(self) -> dict:
        from ray_s3ft.run.fingerprint import model_identity

        return model_identity(self.cfg.model.path, self.model_path)

    def eval_before(self, force: bool = False) -> dict:
        """The base model's scores, kept in ``run_dir/eval_before.json`` with each question's
        verdict beside them (a resumed run or grid reads them back while their fingerprint
        matches; ``force``: redo them if it does not)."""
        from ray_s3ft.run.fingerprint import eval_fingerprint

        fingerprint = eval_fingerprint(self.cfg, self.model_identity())
        return cached_eval(
            self.run_dir / "eval_before.json",
            lambda: self.evaluate(items=True),
            fingerprint,
            force,
        )

    def build_targets(
        self, cfg: Config | None = None, force: bool = False, run_dir: Path | None = None
    ):
        """The S3FT target store of ``cfg`` (default: the session's), in ``run_dir`` (default:
        the run directory); ``force``: rebuild a store that another setting made."""
        return build_targets(cfg or self.cfg, self.groups, self.examples, run_dir or self.run_dir,
                             self.model_path, self.tokenizer, force)  # fmt: skip


def _working_rule(cfg: Config):
    """``judge.paraphrase_keeps_working``: math examples' paraphrases must keep the gold's
    working (``verifiers.math.keeps_working``); None when off."""
    if not cfg.judge.paraphrase_keeps_working:
        return None
    from ray_s3ft.verifiers.math import keeps_working

    return lambda ex, paraphrase: ex.verifier != "math" or keeps_working(paraphrase, ex.gold)


def build_targets(
    cfg: Config, groups, examples, run_dir: Path, model_path: str, tokenizer, force: bool = False
):
    from rich.progress import Progress

    from ray_s3ft.prompts import paraphrase_template
    from ray_s3ft.run.fingerprint import model_identity
    from ray_s3ft.run.target_store import build_targets as build
    from ray_s3ft.tasks.data_report import response_token_counter
    from ray_s3ft.workers.judge import judge_on
    from ray_s3ft.workers.rollout import RolloutWorker

    n = cfg.rollout.max_new_tokens
    template = paraphrase_template(cfg.data.task, cfg.data.paraphrase_template)
    fingerprint = {  # the prompts are in the examples' digest
        "model": model_identity(cfg.model.path, model_path),
        "task": cfg.data.task,
        "train_size": len(examples),
        "max_new_tokens": n,
        "judge": asdict(resolved_judge(cfg)),
        "paraphrase_template": template,
    }
    count, budget = response_token_counter(tokenizer), cfg.data.max_response_tokens
    with Progress(transient=True) as bar:
        task = bar.add_task("S3FT targets", total=len(examples))
        result = build(
            examples,
            run_dir,
            mode=cfg.algorithm.targets,
            fingerprint=fingerprint,
            greedy=lambda p, m: groups.rollout.map(RolloutWorker.answers, p, max_new_tokens=m),
            paraphrase=lambda p, m: groups.rollout.map(
                RolloutWorker.paraphrase, p, max_new_tokens=m, template=template
            ),
            judge=lambda items: judge_on(groups.judge, items, cfg.judge.timeout_s)[0],
            max_new_tokens=n,
            on_chunk=lambda k: bar.advance(task, k),
            keeps_working=_working_rule(cfg),
            force=force,
            # a self answer or paraphrase over the response budget is never cut: the next
            # rung is used
            fits=lambda text: count(text) <= budget,
        )
    frac, und, long = result.fractions(), result.undecided(), result.too_long()
    cut = result.unfinished()
    say(
        f"targets ({cfg.algorithm.targets}): {result.computed} built, {result.reused} reused; "
        f"self {frac['self']:.1%}, paraphrase {frac['paraphrase']:.1%}, gold {frac['gold']:.1%}; "
        f"undecided verdicts: self {und['self']}, paraphrase {und['paraphrase']} "
        f"of {len(result.records)}; over data.max_response_tokens {budget} (next rung used): "
        f"self {long['self']}, paraphrase {long['paraphrase']}; cut at {n} tokens: self "
        f"{cut['self']} ({cut['self_rejected']} accepted by the judge, rejected), paraphrase "
        f"{cut['paraphrase']} ({cut['paraphrase_rejected']} rejected)"
    )
    return result


def evaluate_on_engines(
    groups,
    eval_sets: dict,
    max_new_tokens: int,
    *,
    choice_target: str = "text",
    judge_timeout_s: float | None = None,
    math_extract: str = "flexible",
    items: bool = False,
) -> dict:
    """Every eval set scored on the rollout engines (the weights being trained): greedy answers,
    multiple choice by log-likelihood, code in the sandbox and llm answers by the LLM judge on
    the judge workers (``scoring.score_sets``); the ``drift`` set (``with_drift``) as
    ``{"kl", "k3", "tokens", "n"}``. ``{set: scores, "heldout_mean": ..., "drift": ...}``;
    ``items``: also ``"items"``, each question's verdict (``scoring.item_verdicts``), which
    ``write_eval`` keeps beside the scores."""
    from ray_s3ft.evaluation.scoring import heldout_sets, item_verdicts, score_sets
    from ray_s3ft.tasks import drift
    from ray_s3ft.workers.judge import judge_on
    from ray_s3ft.workers.rollout import RolloutWorker

    out, records = score_sets(
        {k: v for k, v in eval_sets.items() if k != drift.NAME},
        greedy=lambda p: groups.rollout.map(
            RolloutWorker.answers, p, max_new_tokens=max_new_tokens
        ),
        loglik=lambda pairs, raw=False: groups.rollout.map(
            RolloutWorker.loglikelihoods, pairs, raw=raw
        ),
        judge=lambda items: judge_on(groups.judge, items, judge_timeout_s, by_item=True)[0],
        choice_target=choice_target,
        math_extract=math_extract,
        cut=lambda prompts, raw=False: groups.rollout.map(
            RolloutWorker.prompts_cut, prompts, raw=raw
        ),
    )
    heldout = [v["accuracy"] for v in heldout_sets(out).values()]
    out["heldout_mean"] = sum(heldout) / len(heldout) if heldout else None
    if items:
        out["items"] = item_verdicts(records)
    if eval_sets.get(drift.NAME):
        items = eval_sets[drift.NAME]
        pairs = [(it.prompt_ids, it.token_ids) for it in items]
        out[drift.NAME] = drift.drift_score(
            items, groups.rollout.map(RolloutWorker.token_logprobs, pairs)
        )
    return out


def eval_options(cfg: Config) -> dict:
    """``evaluate_on_engines``' options from a config."""
    return {
        "choice_target": cfg.eval.choice_target,
        "judge_timeout_s": cfg.judge.timeout_s,
        "math_extract": cfg.judge.math_extract,
    }


def with_drift(cfg: Config, groups, eval_sets: dict, run_dir: Path, model_path: str) -> dict:
    """``eval_sets`` plus the ``drift`` set when ``eval.drift`` is on: the base model's greedy
    answers to the shipped general prompts and their base logprobs, made on the engines while
    they serve the base weights (call before any weight sync) and kept in
    ``run_dir/drift_base.json``."""
    from ray_s3ft.tasks import drift
    from ray_s3ft.tasks.types import DataError
    from ray_s3ft.workers.rollout import RolloutWorker

    if not cfg.eval.drift:
        return eval_sets
    if drift.NAME in eval_sets:
        raise DataError(f"eval set name {drift.NAME!r} is taken; eval.drift needs it")
    n, prompts = cfg.eval.max_new_tokens, list(drift.PROMPTS[: cfg.eval.drift_size])
    items = drift.load_or_make_base(
        run_dir / "drift_base.json",
        drift.fingerprint(model_path, prompts, n),
        lambda: drift.make_base(
            prompts,
            lambda p: groups.rollout.map(RolloutWorker.greedy_tokens, p, max_new_tokens=n),
            lambda pairs: groups.rollout.map(RolloutWorker.token_logprobs, pairs),
        ),
    )
    return {**eval_sets, drift.NAME: items}


def cached_eval(path: Path, fn, fingerprint: dict, force: bool = False) -> dict:
    """``fn()``'s scores, written by ``write_eval`` with ``fingerprint`` beside them
    (``NAME.fingerprint.json``); read back while the fingerprint matches. Another fingerprint
    (or none) is a ConfigError naming the keys that differ; ``force``: evaluate again."""
    from ray_s3ft.run import fingerprint as fp

    fp_path = path.with_suffix(".fingerprint.json")
    if path.exists() and fp.check_reuse(path, fp.load(fp_path), fingerprint, force):
        return json.loads(path.read_text())
    result = write_eval(path, fn())
    fp.save(fp_path, fingerprint)
    return result


def write_eval(path: Path, scores: dict) -> dict:
    """The scores in ``path`` (``eval_before.json``, ``eval_after.json``), and each question's
    verdict (``scores["items"]``) beside them in ``NAME.items.jsonl``, one JSON line per
    question (``set``, ``id``, ``h``: the prompt's hash, ``correct``): a paired comparison of
    two runs needs their verdicts on the same questions. Returns the scores without items."""
    items = scores.get("items")
    scores = {k: v for k, v in scores.items() if k != "items"}
    path.write_text(json.dumps(scores, indent=2) + "\n")
    if items is not None:
        with open(path.with_suffix(".items.jsonl"), "w") as f:
            f.writelines(json.dumps(it) + "\n" for it in items)
    return scores
