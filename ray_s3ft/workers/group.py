"""A group of identical role actors, called through function objects, not method-name strings.

    learners = ActorGroup(LearnerActor, 2, name="learner", resources=Resources(cpus=1))
    stats = learners.scatter(LearnerActor.train_step, shards, mode="sft")

``ray.remote`` is applied here, at launch, so the roles stay plain classes that a test can also
run in-process (``local=True``: same calls, no Ray). Each group reserves its actors' resources in
one placement group, so a group either starts whole or fails with a message saying what it
needed, instead of half of it waiting forever for CPUs another group holds.

Faults: a call fails as soon as any actor of it dies (``ActorDied``, naming the group whose actor
died: a call that waited on another group's output names that group), not when the slowest rank
notices. An actor whose node was lost is *unreachable* first (``ActorDied.lost``: Ray marks
the node dead only after its health checks fail, and a call in flight is not retried);
``wait_back`` waits for Ray to restart it on a replacement node. Each actor reports an
incarnation id; ``restarts()`` counts the actors Ray has restarted since the last look, which is
how a run counts the faults it survived. With ``log_dir`` an actor's stdout and stderr (vLLM,
DeepSpeed, warnings) go to ``<log_dir>/<group>-<i>.log`` instead of the driver's console.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ray_s3ft.errors import OutOfMemory

T = TypeVar("T")


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0  # Ray CPUs per actor
    gpus: float = 0.0  # Ray GPUs per actor
    env: dict[str, str] = field(default_factory=dict)  # environment of the actor processes
    max_restarts: int = 0  # restarts of a crashed actor (stateless roles only)
    custom: dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor


class GroupStartError(RuntimeError):
    """An actor group could not be placed or constructed; the message says which and why."""


class ActorDied(RuntimeError):
    """An actor of ``group`` died during a call (and Ray did not, or could not, restart it).
    ``lost``: it became unreachable (its node was lost or cut off), not a crash Ray reported."""

    def __init__(self, group: str, cause: BaseException, lost: bool | None = None) -> None:
        super().__init__(f"{group}: an actor died: {type(cause).__name__}: {cause}")
        from ray.exceptions import ActorUnavailableError  # also RayTaskError(ActorUnavail...)

        self.group = group
        self.lost = isinstance(cause, ActorUnavailableError) if lost is None else lost


# the group of every actor started in this process, by actor id: a call that fails because
# an argument came from a dead actor of another group (the weights of a dead learner rank)
# names that group, not the one called
_GROUP_OF: dict[str, str] = {}


def _tracked(cls: type, log_dir: str | None) -> type:
    """``cls`` with an incarnation id (new on every restart) and, with ``log_dir``, its output
    in a file of its own."""

    class Tracked(cls):
        def __init__(self, *args, _log_name: str = "", **kw) -> None:
            self._ray_s3ft_incarnation = uuid.uuid4().hex
            if log_dir:
                _redirect_output(os.path.join(log_dir, f"{_log_name}.log"))
            super().__init__(*args, **kw)

        def ray_s3ft_incarnation(self) -> str:
            return self._ray_s3ft_incarnation

    Tracked.__name__ = Tracked.__qualname__ = cls.__name__  # what Ray's logs and tools show
    return Tracked


def _redirect_output(path: str) -> None:
    """Point this process's stdout and stderr (file descriptors: C++ and child output too) at
    ``path``, appended, so a restarted actor continues the same file."""
    import sys

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # e.g. a node without the run directory: keep Ray's own worker logs
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class ActorGroup(Generic[T]):
    def __init__(
        self,
        cls: type[T],
        n: int,
        *,
        name: str,
        resources: Resources = Resources(),
        kwargs: dict[str, Any] | None = None,
        rank_kwargs: Callable[[int], dict[str, Any]] | None = None,
        local: bool = False,
        ready_timeout_s: float = 600.0,
        log_dir: str | None = None,
    ) -> None:
        """``kwargs`` go to every actor's constructor, ``rank_kwargs(i)`` adds actor i's own."""
        if n < 1:
            raise ValueError(f"{name}: need at least one actor, got {n}")
        self.cls, self.name, self.local = cls, name, local
        self.placement_group = None
        self._incarnations: list[str | None] = [None] * n
        make = [{**(kwargs or {}), **(rank_kwargs(i) if rank_kwargs else {})} for i in range(n)]
        if local:
            self.actors: list[Any] = [cls(**kw) for kw in make]
            return
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": resources.cpus, **({"GPU": resources.gpus} if resources.gpus else {})}
        bundle.update(resources.custom)
        pg = placement_group([dict(bundle)] * n, strategy="PACK", name=f"ray_s3ft-{name}")
        try:
            ray.get(pg.ready(), timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(pg)
            raise GroupStartError(
                f"{name}: the cluster could not place {n} x {bundle} within {ready_timeout_s:.0f} s "
                f"(available: {ray.available_resources()}); lower resources.* or add nodes"
            ) from None
        self.placement_group = pg
        remote_cls = ray.remote(_tracked(cls, log_dir))
        self.actors = [
            remote_cls.options(
                num_cpus=resources.cpus,
                num_gpus=resources.gpus,
                resources=dict(resources.custom) or None,
                max_restarts=resources.max_restarts,
                max_task_retries=resources.max_restarts,  # a restarted stateless actor retries
                runtime_env={"env_vars": dict(resources.env)} if resources.env else None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=i
                ),
            ).remote(**kw, _log_name=f"{name}-{i}")
            for i, kw in enumerate(make)
        ]
        for actor in self.actors:
            _GROUP_OF[actor._actor_id.hex()] = name

    def __len__(self) -> int:
        return len(self.actors)

    def nodes(self) -> list[str]:
        """The Ray node id each actor runs on, in actor order ("local" in this process)."""
        if self.local:
            return ["local"] * len(self.actors)
        return self.wait([a.__ray_call__.remote(_node_id) for a in self.actors])

    # -------------------------------------------------------------------------------- calls

    def _method(self, fn: Callable) -> str:
        name = getattr(fn, "__name__", None)
        if name is None or getattr(self.cls, name, None) is not fn:
            raise TypeError(f"{self.name}: {fn!r} is not a method of {self.cls.__name__}")
        return name

    def submit(self, fn: Callable, *args: Any, ranks: Sequence[int] | None = None, **kw: Any):
        """Start ``fn(*args, **kw)`` on the given actors (default all); futures, or values when
        local. Pair with ``wait``."""
        name = self._method(fn)
        ranks = range(len(self.actors)) if ranks is None else ranks
        if self.local:
            return [getattr(self.actors[i], name)(*args, **kw) for i in ranks]
        return [getattr(self.actors[i], name).remote(*args, **kw) for i in ranks]

    def wait(self, futures: list) -> list:
        """The futures' values in order; raises ``ActorDied`` as soon as one actor has died
        (a rank blocked in a collective with a dead peer would otherwise never return)."""
        if self.local:
            return list(futures)
        import ray

        try:
            pending = list(futures)
            while len(pending) > 1:
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    ray.get(ready)  # raises this one's error now
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
                    raise
                except ray.exceptions.RayTaskError as e:
                    died = _peer_death(pending)  # the fault, if this error only echoes it
                    if died is None:
                        raise
                    raise died from e
            return ray.get(futures)
        except ray.exceptions.OutOfMemoryError as e:
            raise memory_kill(self.name, e) from None
        except ray.exceptions.RayActorError as e:
            group = _GROUP_OF.get(getattr(e, "actor_id", None) or "", self.name)
            oom = memory_kill(group, e)
            if oom is not None:  # restarting it would only run out of memory again
                raise oom from None
            raise ActorDied(group, e) from e
        except ray.exceptions.ObjectLostError as e:
            # an argument of the call was lost with the node that held it: the result of an
            # actor of another group (a learner rank's weights, which the engines read), whose
            # node is gone; that group is the one to restart
            raise ActorDied(_producer_group(e) or self.name, e, lost=True) from e

    def call(self, fn: Callable, *args: Any, **kw: Any) -> list:
        """The same call on every actor; their results in actor order."""
        return self.wait(self.submit(fn, *args, **kw))

    def call_one(self, fn: Callable, *args: Any, rank: int = 0, **kw: Any):
        return self.wait(self.submit(fn, *args, ranks=[rank], **kw))[0]

    def scatter(self, fn: Callable, shards: Sequence[Any], **kw: Any) -> list:
        """Actor i gets ``shards[i]`` as first argument (the same ``kw`` for all)."""
        if len(shards) != len(self.actors):
            raise ValueError(f"{self.name}: {len(shards)} shards for {len(self.actors)} actors")
        name = self._method(fn)
        if self.local:
            return [getattr(a, name)(s, **kw) for a, s in zip(self.actors, shards, strict=True)]
        return self.wait(
            [getattr(a, name).remote(s, **kw) for a, s in zip(self.actors, shards, strict=True)]
        )

    def map_chunks(self, fn: Callable, items: Sequence[Any], **kw: Any) -> list:
        """Split ``items`` into one contiguous chunk per actor and call ``fn(chunk, **kw)`` on
        each, in parallel; the per-chunk results in order (empty chunks are not sent)."""
        return self.wait(self._chunk_calls(fn, items, kw)[1])

    def stream_chunks(
        self, fn: Callable, items: Sequence[Any], stall_s: float | None = None, **kw: Any
    ) -> list[list]:
        """``map_chunks`` for a generator method: per chunk sent, the values ``fn(chunk, **kw)``
        yielded, in order. They come back as the actors yield them, so a chunk cut short
        keeps what it yielded before.

        ``stall_s``: an actor that yields nothing for that long is taken as hung: its chunk is
        cut short there and the actor restarted, so the next call does not queue behind it.
        A slow actor that keeps yielding is waited for."""
        used, calls = self._chunk_calls(fn, items, kw)  # generators, or Ray's ref streams
        if self.local:
            return [list(values) for values in calls]
        import ray

        out: dict[int, list] = {i: [] for i in used}
        streams = dict(zip(calls, used, strict=True))
        last = dict.fromkeys(used, time.monotonic())  # when each actor last yielded
        while streams:
            wait_s = None
            if stall_s is not None:
                wait_s = max(
                    0.0, min(last[i] for i in streams.values()) + stall_s - time.monotonic()
                )
            ready, _ = ray.wait(list(streams), num_returns=1, timeout=wait_s)
            for stream in ready:
                try:
                    ref = next(stream)
                except StopIteration:
                    del streams[stream]
                    continue
                out[streams[stream]].append(self.wait([ref])[0])
                last[streams[stream]] = time.monotonic()
            for stream, i in list(streams.items()):
                stalled = stall_s is not None and time.monotonic() - last[i] >= stall_s
                if stalled and not ray.wait([stream], timeout=0)[0]:
                    ray.cancel(stream)  # not retried on the restarted actor
                    ray.kill(self.actors[i], no_restart=False)
                    del streams[stream]
        return [out[i] for i in used]

    def submit_chunks(self, fn: Callable, items: Sequence[Any], **kw: Any) -> list:
        """``map_chunks`` without waiting: futures for ``wait`` (values when local)."""
        return self._chunk_calls(fn, items, kw)[1]

    def _chunk_calls(self, fn: Callable, items: Sequence[Any], kw: dict) -> tuple[list, list]:
        chunks = split_evenly(list(items), len(self.actors))
        used = [i for i, c in enumerate(chunks) if c]
        name = self._method(fn)
        if self.local:
            return used, [getattr(self.actors[i], name)(chunks[i], **kw) for i in used]
        return used, [getattr(self.actors[i], name).remote(chunks[i], **kw) for i in used]

    def map(self, fn: Callable, items: Sequence[Any], **kw: Any) -> list:
        """``map_chunks`` for methods that return one list entry per item: the flat list."""
        return [x for part in self.map_chunks(fn, items, **kw) for x in part]

    # ------------------------------------------------------------------------- node loss

    def states(self) -> list[str]:
        """Each actor's state as Ray's control store (GCS) has it: ALIVE, RESTARTING,
        PENDING_CREATION or DEAD."""
        if self.local:
            return ["ALIVE"] * len(self.actors)
        from ray._private.state import actors  # the GCS table; the state API needs a dashboard

        return [actors(a._actor_id.hex()).get("State", "DEAD") for a in self.actors]

    def wait_back(self, deadline: float, progress: Callable[[str], None]) -> None:
        """Until every actor answers again: Ray restarts an actor whose node was lost once it
        has declared the node dead (its health checks) and a node with room for the actor's
        placement bundle has joined. Raises ``ActorDied`` when an actor is out of restarts or
        ``deadline`` (``time.monotonic()``) passes first; ``progress`` gets a line every 10 s."""
        import ray

        said = time.monotonic()
        while True:
            states = self.states()
            if "DEAD" in states:
                raise ActorDied(self.name, RuntimeError(f"actor states {states}: out of restarts"))
            if all(s == "ALIVE" for s in states):
                try:
                    ray.get([a.ray_s3ft_incarnation.remote() for a in self.actors], timeout=10)
                    return
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    pass  # not declared dead yet, or restarted since the states were read
            now = time.monotonic()
            if now >= deadline:
                raise ActorDied(
                    self.name, TimeoutError(f"not back in time (actor states {states})")
                )
            if now - said >= 10:
                progress(f"{self.name}: actors {states}; {deadline - now:.0f} s left")
                said = now
            time.sleep(2)

    def restarts(self) -> int:
        """How many actors came back as a new incarnation (Ray restarted them) since the last
        call; the first call records the incarnations and returns 0."""
        if self.local:
            return 0
        ids = self.wait([a.ray_s3ft_incarnation.remote() for a in self.actors])
        new = sum(old is not None and old != now for old, now in zip(self._incarnations, ids))
        self._incarnations = ids
        return new

    def shutdown(self) -> None:
        if self.local:  # the instances go with the group (a learner's engine: its GPU memory)
            self.actors = []
            return
        import ray

        for actor in self.actors:
            ray.kill(actor)
            _GROUP_OF.pop(actor._actor_id.hex(), None)
        if self.placement_group is not None:
            ray.util.remove_placement_group(self.placement_group)
        self.actors, self.placement_group = [], None


def _producer_group(error) -> str | None:
    """The group of the actor whose result ``error`` (an ``ObjectLostError``) lost, if this
    process started it: an actor task's result id holds the task's id, which holds the
    actor's."""
    import ray

    try:
        ref = ray.ObjectRef(bytes.fromhex(error.object_ref_hex))
        return _GROUP_OF.get(ref.task_id().actor_id().hex())
    except (AttributeError, ValueError, TypeError):
        return None


# what Ray says of a worker its memory monitor killed (Ray 2.x). Not "OOM killer": Ray's
# message for any worker that died unexpectedly (a segfault too) names the kernel's as a cause
_KILLED = re.compile(r"low on memory|memory pressure|memory.monitor", re.IGNORECASE)
_NODE = re.compile(r"Memory on the node \(IP: [^)]*\) was ([\d.]+)\s*GB(?: used)? / ([\d.]+)\s*GB")
_TASK = re.compile(r"task name=([^,\s]+)|name=([^,\s]+), pid=")
_PID = re.compile(r"pid=(\d+)")
_USED = re.compile(r"memory used=([\d.]+)\s*GB")


def memory_kill(group: str, error: BaseException) -> OutOfMemory | None:
    """``error`` as an ``OutOfMemory`` of ``group`` when it says a worker was killed for
    memory (``ray.exceptions.OutOfMemoryError``, or an actor's death whose cause says so);
    None for any other error. Ray's own message (its node's top memory users, the docs
    on its memory monitor) is dropped for a line of what was killed and how much it held."""
    import ray

    text = str(error)
    if not isinstance(error, ray.exceptions.OutOfMemoryError) and not _KILLED.search(text):
        return None
    node, task = _NODE.search(text), _TASK.search(text)
    pid, used = _PID.search(text), _USED.search(text)
    return OutOfMemory(
        group,
        task=next((g for g in task.groups() if g), None) if task else None,
        pid=int(pid.group(1)) if pid else None,
        used=float(used.group(1)) if used else None,
        node=(float(node.group(1)), float(node.group(2))) if node else None,
    )


def _peer_death(pending: list, grace_s: float = 30.0):
    """The death of another actor of the same call among ``pending``, if one shows within
    ``grace_s``, else None. A rank in a collective whose peer vanished fails with an error of
    its own (gloo: "Connection reset by peer") a moment before the peer's death is reported;
    the death is the fault to handle (a learner restart), the error only its echo."""
    import ray

    deadline = time.monotonic() + grace_s
    while pending and time.monotonic() < deadline:
        ready, pending = ray.wait(pending, num_returns=1, timeout=deadline - time.monotonic())
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as e:
                return e
            except ray.exceptions.RayError:
                continue
    return None


def split_evenly(items: list, parts: int) -> list[list]:
    """``parts`` contiguous chunks whose sizes differ by at most one (earlier chunks larger)."""
    q, r = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        size = q + (1 if i < r else 0)
        out.append(items[start : start + size])
        start += size
    return out


def _node_id(_actor) -> str:
    """Run inside an actor by ``__ray_call__``: the node it lives on."""
    import ray

    return ray.get_runtime_context().get_node_id()
