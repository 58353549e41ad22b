"""Checks that stop a run within seconds, with one message naming the key, before work starts.

    check_before_ray(cfg)       model paths, the output directory, RAY_ADDRESS: before Ray starts
    check_cluster(cfg)          CPUs, GPUs and custom resources of the joined (or started) cluster,
                                and whether the layout's estimated memory fits its nodes

Each raises ``PreflightError`` (the CLI prints it and exits 2, no traceback). Without them a
missing model fails deep inside an actor, and a cluster that is too small or unreachable makes
``ray.init`` or a placement group wait for minutes.

Imports only the standard library and ``ray_s3ft.config``; ray is imported when a check needs it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import defaultdict
from pathlib import Path

from ray_s3ft.config import Config, resolved_judge

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
_SHOWN_NODES = 4  # nodes described in a resource message
SAY_EVERY_S = 10.0  # how often a wait for resources says what is still missing


class PreflightError(RuntimeError):
    """The environment cannot run this config; the message names the key or variable."""


def check_before_ray(cfg: Config) -> None:
    """Every check that needs no cluster; one PreflightError listing each problem."""
    checks = [
        lambda: check_model_path(cfg.model.path, "model.path"),
        lambda: check_writable_dir(cfg.trainer.output_dir, "trainer.output_dir"),
        lambda: check_ray_address(os.environ.get("RAY_ADDRESS")),
    ]
    if resolved_judge(cfg).verifier == "llm" and cfg.judge.llm_model != "base":
        checks.insert(1, lambda: check_model_path(cfg.judge.llm_model, "judge.llm_model"))
    problems = []
    for check in checks:
        try:
            check()
        except PreflightError as e:
            problems.append(str(e))
    if len(problems) == 1:
        raise PreflightError(problems[0])
    if problems:
        raise PreflightError(
            f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
        )


# ------------------------------------------------------------------------------ model paths


def _looks_local(path: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else that names a path is local."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or Path(path).exists()


def check_model_path(path: str, key: str) -> None:
    """``builtin`` must be shipped; a known model name (``ray-s3ft fetch-model``) is fetched now
    if it is not cached yet; a local path must be a model directory. Hub ids pass."""
    from ray_s3ft.model.fetch import FetchError
    from ray_s3ft.model.paths import BUILTIN, is_known_model, resolve_model_path

    if is_known_model(path):
        try:
            resolve_model_path(path)
        except FetchError as e:
            raise PreflightError(f"{key}={path}: {e}") from None
        return
    if path == BUILTIN:
        try:
            resolve_model_path(path)
        except FileNotFoundError as e:
            raise PreflightError(f"{key}=builtin: {e}") from None
        return
    if not _looks_local(path):
        return
    local = Path(path).expanduser()
    if not local.exists():
        raise PreflightError(
            f"{key}={path}: no such directory (a local path; a hub id has the form org/name)"
        )
    if not (local / "config.json").is_file():
        hint = (
            f"; a checkpoint's model is its hf/ directory: {key}={Path(path) / 'hf'}"
            if (local / "hf" / "config.json").is_file()
            else ""
        )
        raise PreflightError(f"{key}={path}: not a model directory (no config.json){hint}")


# ------------------------------------------------------------------------ output directory


def check_writable_dir(path: str, key: str) -> None:
    """Create `path` (parents too) and write and delete a probe file in it."""
    target = Path(path).expanduser()
    blocker = next((p for p in (target, *target.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        what = "it" if blocker == target else f"{blocker}"
        raise PreflightError(f"{key}={path}: cannot create the directory: {what} is a file")
    probe = target / f".write-probe-{os.getpid()}"
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PreflightError(f"{key}={path}: cannot write there: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- RAY_ADDRESS


def _host_port(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:6379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _local_ray_address() -> str | None:
    """The address ``ray.init(address="auto")`` would join; None if Ray cannot tell us."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    try:
        return canonicalize_bootstrap_address("auto")
    except ConnectionError:
        raise PreflightError(
            "RAY_ADDRESS=auto: no Ray is running on this machine; start one "
            "(`ray start --head`) or unset RAY_ADDRESS to let the run start its own"
        ) from None


def check_ray_address(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A set RAY_ADDRESS must be one Ray can join, and something must listen there."""
    if not address or address == "local":  # unset / "local": the run starts its own Ray
        return
    shown = f"RAY_ADDRESS={address}"
    scheme, _, rest = address.rpartition("://")
    if scheme in ("http", "https"):
        raise PreflightError(
            f"{shown}: that is a dashboard (Jobs API) address, which only `ray job submit "
            f"--address {address}` takes; a job's driver gets RAY_ADDRESS from Ray, and a driver "
            "started by hand joins at the GCS address (host:6379) or ray://host:10001; unset it "
            "to start a local Ray"
        )
    if scheme not in ("", "ray"):
        raise PreflightError(f"{shown}: must be host:port, ray://host:port or auto")
    if address == "auto":
        rest = _local_ray_address()
        if rest is None:
            return
    parsed = _host_port(rest)
    if parsed is None:
        raise PreflightError(f"{shown}: must be host:port, ray://host:port or auto")
    host, port = parsed
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return
    except socket.gaierror as e:
        reason = f"cannot resolve {host}: {e.strerror}"
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
    raise PreflightError(
        f"{shown}: nothing listens at {host}:{port} ({reason}); unset RAY_ADDRESS to start a "
        "local Ray, or point it at a running cluster's GCS address (host:6379, as "
        "`ray start --head` prints it) or ray://host:10001"
    )


# --------------------------------------------------------------------------- cluster size


def _groups(cfg: Config, learners: bool) -> list[tuple[str, str, int, float, float, str | None]]:
    """(role, count key, actors, CPUs each, GPUs each, custom node resource) of each group."""
    r = cfg.resources
    out = [
        ("rollout", "rollout_workers", r.rollout_workers, r.cpus_per_rollout,
         r.gpus_per_rollout, r.rollout_node_resource),
        ("judge", "judge_workers", r.judge_workers, r.cpus_per_judge, r.gpus_per_judge, None),
    ]  # fmt: skip
    if learners:
        out.append(
            ("learner", "learner_ranks", r.learner_ranks, r.cpus_per_learner,
             r.gpus_per_learner, r.learner_node_resource)
        )  # fmt: skip
    return out


def _describe(resources: dict) -> str:
    shown = {
        k: v
        for k, v in resources.items()
        if k not in ("memory", "object_store_memory")
        and not k.startswith(("node:", "accelerator_type:"))
    }
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def check_cluster_resources(
    cfg: Config, cluster_resources: dict, nodes: list[dict], learners: bool = True
) -> None:
    """PreflightError when the cluster (``ray.cluster_resources()``, ``ray.nodes()``) lacks the
    CPUs, GPUs or custom resources the groups reserve, in total or for one actor on one node."""
    groups = _groups(cfg, learners)
    amounts: dict[str, float] = defaultdict(float)  # resource -> the run's total
    terms: dict[str, list[str]] = defaultdict(list)  # resource -> how the total adds up
    for role, count, n, cpus, gpus, custom in groups:
        for resource, each, key in (("CPU", cpus, "cpus"), ("GPU", gpus, "gpus")):
            if each > 0:
                amounts[resource] += n * each
                terms[resource].append(
                    f"resources.{key}_per_{role} {each:g} x resources.{count} {n}"
                )
        if custom:
            amounts[custom] += n
            terms[custom].append(
                f"1 per actor of resources.{role}_node_resource x resources.{count} {n}"
            )
    problems = []
    for resource, amount in amounts.items():
        have = cluster_resources.get(resource, 0.0)
        if amount > have + 1e-9:
            what = resource if resource in ("CPU", "GPU") else f"of custom resource {resource!r}"
            problems.append(
                f"resources: the run needs {amount:g} {what} ({' + '.join(terms[resource])}), "
                f"the cluster has {have:g}"
            )
    if not problems:  # the totals fit; each actor must still fit on one node
        alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
        for role, _, _, cpus, gpus, custom in groups:
            bundle = {k: v for k, v in (("CPU", cpus), ("GPU", gpus), (custom, 1.0)) if k and v}
            if not any(all(r.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) for r in alive):
                keys = [f"resources.cpus_per_{role}", f"resources.gpus_per_{role}"]
                keys += [f"resources.{role}_node_resource"] if custom else []
                shown = ", ".join(_describe(r) for r in alive[:_SHOWN_NODES])
                more = f" and {len(alive) - _SHOWN_NODES} more" if len(alive) > _SHOWN_NODES else ""
                problems.append(
                    f"resources: one {role} actor needs {_describe(bundle)} on one node "
                    f"({', '.join(keys)}), but no node has that much; nodes: {shown}{more}"
                )
    if problems:
        raise PreflightError("\n".join(problems))


def check_cluster(cfg: Config, learners: bool = True, say=None, poll_s: float = 2.0) -> None:
    """``check_cluster_resources`` on the cluster this process has joined (``ray.init`` done).
    With ``resources.wait_for_resources_s`` > 0 a cluster that lacks something is asked again
    every ``poll_s`` until that long has passed (nodes that join late: an autoscaling cluster),
    ``say`` told what is still missing every ``SAY_EVERY_S``; then the error is raised."""
    import ray

    wait_s = cfg.resources.wait_for_resources_s
    started = time.monotonic()
    last_said = None
    while True:
        try:
            check_cluster_resources(cfg, ray.cluster_resources(), ray.nodes(), learners=learners)
        except PreflightError as e:
            waited = time.monotonic() - started
            if waited >= wait_s:
                if wait_s > 0:
                    raise PreflightError(
                        f"{e}\n(waited {waited:.0f} s: resources.wait_for_resources_s={wait_s:g})"
                    ) from None
                raise
            if say is not None and (last_said is None or waited - last_said >= SAY_EVERY_S):
                last_said = waited
                missing = "; ".join(str(e).splitlines())
                say(f"waiting for the cluster ({waited:.0f} of {wait_s:g} s): {missing}")
            time.sleep(min(poll_s, max(0.0, wait_s - waited)))
            continue
        if last_said is not None and say is not None:
            say(f"the cluster has what the run needs after {time.monotonic() - started:.0f} s")
        break
    check_memory(cfg, ray.nodes(), learners, _local_memory())


# --------------------------------------------------------------------------------- memory


def _local_memory() -> tuple[str, float] | None:
    """(this node's IP, its total memory): Ray's ``memory`` resource of the node is what was
    free when Ray started, less its object store; the monitor compares with the total."""
    try:
        import psutil
        import ray

        return ray.util.get_node_ip_address(), float(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001  (no psutil, no Ray: the nodes' own figures serve)
        return None


def memory_limits(nodes: list[dict], local: tuple[str, float] | None = None) -> dict[str, float]:
    """Node -> the bytes Ray's memory monitor lets its processes use before it kills one:
    the node's memory (``local``'s total for this machine, else Ray's ``memory`` and
    ``object_store_memory`` resources) x ``RAY_memory_usage_threshold`` (Ray's default 0.95)."""
    from ray_s3ft.run.memory import monitor_threshold

    threshold = monitor_threshold()
    out: dict[str, float] = {}
    for node in nodes:
        if not node.get("Alive", True):
            continue
        ip, res = node.get("NodeManagerAddress", "?"), node.get("Resources", {})
        total = res.get("memory", 0.0) + res.get("object_store_memory", 0.0)
        if local is not None and ip == local[0]:
            total = local[1]
        name = f"node {ip}"
        if name in out:  # several Ray nodes on one machine
            name = f"{name} ({node.get('NodeID', '')[:8] or len(out)})"
        out[name] = total * threshold
    return out


def check_memory(
    cfg: Config, nodes: list[dict], learners: bool = True, local=None, model_dir=None
) -> None:
    """PreflightError (``resources.memory_check: error``) or a warning (``warn``) when the
    estimated peak memory of the run's processes (``run/memory.py``) exceeds what the nodes
    allow; nothing for a model not on disk yet (a hub id) or nodes that report no memory."""
    from ray_s3ft.run import memory

    mode = cfg.resources.memory_check
    if mode == "skip":
        return
    limits = {k: v for k, v in memory_limits(nodes, local).items() if v > 0}
    if not limits:
        return
    if model_dir is None:
        from ray_s3ft.model.paths import resolve_model_path

        model_dir = resolve_model_path(cfg.model.path)
    shape = memory.model_shape(model_dir, cfg)
    if shape is None:
        return
    problem = memory.fit_problem(cfg, shape, limits, learners)
    if problem is None:
        return
    if mode == "warn":
        log.warning("%s (resources.memory_check=warn: starting anyway)", problem)
        return
    raise PreflightError(
        f"{problem}; or resources.memory_check: warn to start anyway (docs/real-models.md, Memory)"
    )
