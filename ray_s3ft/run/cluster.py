"""Starting or joining Ray, and launching the three role groups from a config.

``RAY_ADDRESS`` set (``ray job submit`` sets it) -> join that cluster. Otherwise start a private
local one whose temp dir lives in the run directory (or, where that path is too long for Ray's
sockets, in /tmp, removed when that Ray stops), so nothing touches another user's Ray on a
shared machine, and whose logical CPU count covers the groups' reservations (a laptop has
fewer cores than the default layout reserves; the roles take turns, so oversubscription costs
little).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ray_s3ft.config import Config, resolved_judge
from ray_s3ft.workers.group import ActorDied, ActorGroup, GroupStartError, Resources

log = logging.getLogger(__name__)


def required_cpus(cfg: Config) -> float:
    r = cfg.resources
    return (
        r.rollout_workers * r.cpus_per_rollout
        + r.judge_workers * r.cpus_per_judge
        + r.learner_ranks * r.cpus_per_learner
    )


def verbose() -> bool:
    """``--verbose``: vLLM, Ray and DeepSpeed output on the console, not only in ``logs/``."""
    return os.environ.get("RAY_S3FT_VERBOSE") == "1"


def log_dir(run_dir: Path) -> str | None:
    """Where the actors write their output (None with ``--verbose``: Ray forwards it)."""
    return None if verbose() else str((run_dir / "logs").resolve())


@dataclass
class LocalRay:
    """A local Ray this process started. ``temp``: the temp dir it made for it outside the run
    directory (whose path was too long for Ray's sockets), removed by ``stop``."""

    temp: Path | None = None

    def stop(self) -> None:
        """Shut Ray down, then remove its temp dir once its processes have exited."""
        import ray

        ray.shutdown(wait_for_processes=True)
        if self.temp is not None:
            remove_tree(self.temp)


def remove_tree(path: Path, tries: int = 10) -> None:
    """Remove ``path``; a Ray worker still exiting may add a log file as it goes, so try again
    for a few seconds."""
    for _ in range(tries):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.5)
    log.warning("could not remove Ray's temp dir %s", path)


def start_ray(cfg: Config, run_dir: Path) -> LocalRay | None:
    """Connect to Ray; the local cluster this call started, if it did (the caller stops it)."""
    import ray

    if ray.is_initialized():
        return None
    env = worker_env(run_dir)
    quiet = {
        "log_to_driver": verbose(),
        "logging_level": logging.INFO if verbose() else logging.ERROR,
    }
    if os.environ.get("RAY_ADDRESS"):
        log.info("joining the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        if not Path(cfg.trainer.output_dir).is_absolute():
            log.warning(
                "trainer.output_dir=%s is relative: on a cluster it lands in the job's working "
                "directory; give an absolute path on shared storage",
                cfg.trainer.output_dir,
            )
        # Ray refuses a driver runtime_env that repeats a key the job's own runtime_env sets
        job_env = _job_env_vars()
        env = {k: v for k, v in env.items() if k not in job_env}
        ray.init(runtime_env={"env_vars": env}, **quiet)
        return None
    temp = run_dir / ".ray"
    temp.mkdir(parents=True, exist_ok=True)
    # the auth token stays in the run directory, not in a temp dir removed at the end: the
    # process's first token is read for its whole life (``private_auth_token``)
    private_auth_token(temp)
    own = None
    # Ray's unix sockets, <temp>/session_<date>_<time>_<pid>/sockets/plasma_store (62 bytes
    # after <temp>), must stay under 108 bytes
    if len(str(temp.resolve())) > 40:
        short = "/tmp" if os.path.isdir("/tmp") else None  # $TMPDIR may be long too
        own = Path(tempfile.mkdtemp(prefix="ray_s3ft-", dir=short))
    cpus = max(os.cpu_count() or 1, int(required_cpus(cfg) + 0.999))
    try:
        init_private_ray(own or temp, cpus, env, **quiet)
    except BaseException:
        if own is not None:
            remove_tree(own)
        raise
    return LocalRay(own)


def init_private_ray(temp: Path, num_cpus: int, env_vars: dict[str, str], **kw) -> None:
    """Start a local Ray of our own: its temp dir (keep the path short: Ray's socket paths
    are limited), its auth token beside it, no dashboard, ``env_vars`` for every worker
    (``worker_env``). ``kw`` goes to ``ray.init``. The caller calls ``ray.shutdown()``;
    ``temp`` is the caller's to remove after."""
    import ray

    private_auth_token(temp)
    ray.init(
        num_cpus=num_cpus,
        _temp_dir=str(Path(temp).resolve()),
        include_dashboard=False,
        runtime_env={"env_vars": env_vars},
        **kw,
    )


def _job_env_vars() -> dict:
    """The env_vars of the runtime_env ``ray job submit`` gave this driver, if any."""
    import json

    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        return dict((job.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, TypeError, AttributeError):
        return {}


def private_auth_token(temp: Path) -> None:
    """Ray >= 2.5x turns token auth on for a local cluster and, without a token, writes one to
    ~/.ray/auth_token, which then switches every later Ray of that user to token auth. Keep the
    token of our private cluster beside it instead (unless the user configured auth).

    The first private cluster of a process sets ``RAY_AUTH_TOKEN_PATH``, and later ones in the
    same process keep it: Ray's client holds the token it read first, so a second token would
    lock the driver out of its own new cluster. Keep that first temp dir for the process's
    life (the test fixtures' module temp dirs live to the end of the session)."""
    if any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return
    import secrets

    token = temp / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token.resolve())


def worker_env(run_dir: Path) -> dict[str, str]:
    """The environment every actor gets: caches inside ``run_dir``, quiet vLLM, unbuffered
    output."""
    cache = str((run_dir / ".cache").resolve())
    return {
        "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", f"{cache}/vllm"),
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class Groups:
    rollout: ActorGroup
    judge: ActorGroup
    learner: ActorGroup | None  # None for phases that do not train (build-targets)
    nccl_meta: list | None = None  # GPU weight sync: what every broadcast carries; None on CPU
    # a fresh, set-up learner group, placed within the given seconds
    new_learner: Callable[[float], ActorGroup] | None = None

    def restart_learner(self, ready_timeout_s: float = 600.0) -> None:
        """Replace the whole learner group (a dead rank leaves its peers' process group
        broken): the survivors are killed, new ranks start from the base weights once the
        cluster can place them (``GroupStartError`` after ``ready_timeout_s``). Under NCCL
        weight sync the engines then join a new transfer group with the new rank 0, at the port
        it picked: the old group's rendezvous and sender died with the old rank 0."""
        self.learner.shutdown()
        self.learner = self.new_learner(ready_timeout_s)
        if self.nccl_meta is None:
            return
        try:
            self.nccl_meta = _connect_nccl(self)
        except ActorDied:
            raise
        except Exception as e:  # NCCL's or vLLM's error in an actor: this start failed
            raise GroupStartError(
                f"learner: the new rank 0 and the rollout engines could not form the NCCL "
                f"weight-sync group ({type(e).__name__}: {e})"
            ) from e

    def nodes(self) -> dict[str, list[str]]:
        """Each group's actors' Ray node ids, in actor order."""
        groups = {"rollout": self.rollout, "judge": self.judge, "learner": self.learner}
        return {name: g.nodes() for name, g in groups.items() if g is not None}

    def shutdown(self) -> None:
        for group in (self.rollout, self.judge, self.learner):
            if group is not None:
                group.shutdown()


def launch(
    cfg: Config,
    model_path: str,
    learners: bool = True,
    local: bool = False,
    log_dir: str | None = None,
) -> Groups:
    """Create the rollout, judge and (optionally) learner groups; the learners join their
    process group before this returns. Actors start in parallel. ``log_dir``: where the
    actors' own output goes (None: Ray's worker logs, forwarded to the console)."""
    from ray_s3ft.workers.judge import JudgeWorker
    from ray_s3ft.workers.rollout import RolloutWorker

    r = cfg.resources
    # GPU learners and GPU vLLM engines sync by NCCL broadcast; otherwise via the object store
    nccl = learners and cfg.rollout.backend == "vllm" and r.gpus_per_rollout > 0
    nccl = nccl and r.gpus_per_learner > 0
    # LoRA adapters travel by the object store (a few MB), GPU or not (run/weight_sync.py)
    nccl = nccl and cfg.rollout.lora_sync != "adapter"
    threads = {"OMP_NUM_THREADS": "1"}  # torch/OMP threads per actor: cores are shared
    rollout = ActorGroup(
        RolloutWorker,
        r.rollout_workers,
        name="rollout",
        resources=Resources(
            r.cpus_per_rollout,
            r.gpus_per_rollout,
            threads,
            max_restarts=2,
            custom=_node_resource(r.rollout_node_resource),
        ),
        kwargs=dict(
            model_path=model_path,
            cfg=cfg.rollout,
            max_model_len=cfg.model.max_model_len,
            max_prompt_tokens=cfg.data.max_prompt_tokens,
            trust_remote_code=cfg.model.trust_remote_code,
            nccl_sync=nccl,
            threads=rollout_threads(cfg),
            peers=r.rollout_workers,
            lora_rank=cfg.model.lora.r if cfg.rollout.lora_sync == "adapter" else None,
        ),
        local=local,
        log_dir=log_dir,
    )
    # the pinned groups reserve their nodes before the unpinned judges take CPUs wherever
    # there is room (else judges on a learner node could leave its ranks no CPU)
    # the learner group's placement first, its setup (DeepSpeed: the longest start) after the
    # judges were created, so the judge processes start while the ranks set up
    learner = _place_learner(cfg, model_path, local, log_dir) if learners else None
    judge = ActorGroup(
        JudgeWorker,
        r.judge_workers,
        name="judge",
        resources=Resources(r.cpus_per_judge, r.gpus_per_judge, threads, max_restarts=3),
        kwargs=dict(
            cfg=resolved_judge(cfg),
            max_model_len=cfg.model.max_model_len,
            # one code-test run at a time per CPU the actor reserves
            sandboxes=max(1, math.ceil(r.cpus_per_judge)),
        ),
        local=local,
        log_dir=log_dir,
    )
    if not learners:
        return Groups(rollout=rollout, judge=judge, learner=None)
    try:
        _setup_learner(learner)
    except BaseException:
        judge.shutdown()
        rollout.shutdown()
        raise
    groups = Groups(
        rollout=rollout,
        judge=judge,
        learner=learner,
        new_learner=lambda wait_s: _launch_learner(cfg, model_path, local, log_dir, wait_s),
    )
    if nccl:
        groups.nccl_meta = _connect_nccl(groups)
    for group in (rollout, judge):
        group.restarts()  # the incarnations later restarts are counted against
    return groups


def rollout_threads(cfg: Config) -> int:
    """``rollout.threads`` for the actors; auto (0) is resolved on the actor's node, except in
    async mode, where an engine keeps its reserved CPUs because the learners run beside it."""
    if cfg.rollout.threads == 0 and cfg.rollout.async_:
        return max(1, int(cfg.resources.cpus_per_rollout))
    return cfg.rollout.threads


def _launch_learner(
    cfg: Config, model_path: str, local: bool, log_dir: str | None, ready_timeout_s: float = 600.0
):
    learner = _place_learner(cfg, model_path, local, log_dir, ready_timeout_s)
    _setup_learner(learner)
    return learner


def _place_learner(
    cfg: Config, model_path: str, local: bool, log_dir: str | None, ready_timeout_s: float = 600.0
):
    """The learner group, placed and its actors created; ``_setup_learner`` joins them."""
    from ray_s3ft.workers.learner import LearnerActor

    r = cfg.resources
    learner_threads = max(1, int(r.cpus_per_learner))
    learner = ActorGroup(
        LearnerActor,
        r.learner_ranks,
        name="learner",
        resources=Resources(
            r.cpus_per_learner,
            r.gpus_per_learner,
            {"OMP_NUM_THREADS": str(learner_threads)},
            custom=_node_resource(r.learner_node_resource),
        ),
        kwargs=dict(
            world_size=r.learner_ranks,
            model_path=model_path,
            model=cfg.model,
            cfg=cfg.learner,
            grpo=cfg.algorithm.grpo,
            lr=cfg.learner.lr,
            grpo_lr=cfg.learner.grpo_lr,
            weight_decay=cfg.learner.weight_decay,
            seed=cfg.trainer.seed,
            threads=learner_threads,
        ),
        rank_kwargs=lambda i: {"rank": i},
        local=local,
        ready_timeout_s=ready_timeout_s,
        log_dir=log_dir,
    )
    return learner


def _setup_learner(learner) -> None:
    """The ranks join their process group and build their engines (collective)."""
    from ray_s3ft.workers.learner import LearnerActor

    try:
        addr, port = learner.call_one(LearnerActor.master_address)
        learner.call(LearnerActor.setup, addr, port)
    except BaseException:
        learner.shutdown()  # not half a group left holding its placement
        raise


def _node_resource(name: str | None) -> dict[str, float]:
    return {name: 1.0} if name else {}


def _connect_nccl(groups: Groups) -> list:
    """One NCCL group: learner rank 0 is rank 0, engine i is rank 1 + i (tensor parallel 1).
    Both sides must join concurrently."""
    from ray_s3ft.workers.learner import LearnerActor
    from ray_s3ft.workers.rollout import RolloutWorker

    addr, port = groups.learner.call_one(LearnerActor.master_address)
    n = len(groups.rollout)
    sender = groups.learner.submit(LearnerActor.nccl_connect, addr, port, n, ranks=[0])
    receivers = [
        groups.rollout.submit(RolloutWorker.nccl_connect, addr, port, 1 + i, 1 + n, ranks=[i])[0]
        for i in range(n)
    ]
    groups.rollout.wait(receivers)
    return groups.learner.wait(sender)[0]
