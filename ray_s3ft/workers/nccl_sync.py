"""GPU weight sync: NCCL broadcast from learner rank 0 to every vLLM rollout engine.

UNVERIFIED on this project's CPU machines: nothing here has run end to end (it needs CUDA,
NCCL and a GPU build of vLLM). It is written against vLLM 0.32's weight-transfer API:

* vllm/distributed/weight_transfer/nccl_common.py: ``NCCLWeightTransferInitInfo``,
  ``worker_init_payload``, ``trainer_init`` (a ``StatelessProcessGroup`` + ``PyNcclCommunicator``);
* vllm/distributed/weight_transfer/nccl_engine.py: ``NCCLWeightTransferUpdateInfo`` and the
  worker-side ``NCCLWeightTransferEngine.receive_weights``;
* vllm/distributed/weight_transfer/packed_tensor.py: ``packed_nccl_broadcast_producer`` /
  ``packed_nccl_broadcast_consumer``, which split the stream into the same chunks on both sides;
* vllm/v1/worker/gpu_worker.py: ``init_weight_transfer_engine``, ``start_weight_update``,
  ``update_weights``, ``finish_weight_update``, reached from an offline ``vllm.LLM`` through
  ``llm.collective_rpc`` (``vllm.LLM`` has no wrappers of its own; ``AsyncLLM`` in
  vllm/v1/engine/async_llm.py makes the same calls).

Group layout: one NCCL group of ``world_size = 1 + num_receivers`` ranks. Learner rank 0 is
rank 0 (it also hosts the TCPStore rendezvous at ``master_address:master_port``, so that must be
its node's reachable IP and a free port); engine k's workers take ranks
``rank_offset_k .. rank_offset_k + tp_k - 1`` with ``rank_offset_k = 1 + sum(tp_j, j < k)``.

Both phases are collective, so the controller must launch the two sides CONCURRENTLY (e.g. Ray
``.remote()`` calls, then one ``ray.get`` over all of them); calling them one after another
deadlocks:

1. ``NCCLWeightSender.connect()`` with every ``receiver_connect()`` (once per learner group;
   the TCPStore waits 300 s, vllm/distributed/utils.py ``StatelessProcessGroup.create``). A
   restarted learner group's new rank 0 opens a new group at a new port, and the engines,
   which outlive it, drop their old communicator and join that one (a learner that dies
   during a broadcast instead leaves the engines blocked in it: not recovered);
2. per sync, ``NCCLWeightSender.send(named)`` with every ``receiver_update(llm, meta, v)`` where
   ``meta = tensor_meta(named)``: the receivers size their buffers and cut their chunks from
   ``meta``, so it must describe exactly the tensors ``send`` gets, in the same order.

Names are HF checkpoint names (what ``model.load_weights`` takes); tensors are full, not shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TensorMeta = tuple[str, str, tuple[int, ...]]

_SRC = 0  # the learner is rank 0 of the transfer group; vLLM's engines assume src=0 too


def _wire_params() -> dict[str, Any]:
    """Packing parameters that sender and receivers must agree on. The receivers get them in
    their init info (the worker engine decodes with whatever it was told at init); the sender
    reads the same values here, so both sides use vLLM's own defaults."""
    from vllm.distributed.weight_transfer.packed_tensor import (
        DEFAULT_PACKED_BUFFER_SIZE_BYTES,
        DEFAULT_PACKED_NUM_BUFFERS,
    )

    return {
        "packed": True,
        "packed_buffer_size_bytes": DEFAULT_PACKED_BUFFER_SIZE_BYTES,
        "packed_num_buffers": DEFAULT_PACKED_NUM_BUFFERS,
    }


def vllm_engine_kwargs() -> dict:
    """Extra ``vllm.LLM(...)`` kwargs that make every worker build an NCCLWeightTransferEngine.

    A plain dict (EngineArgs.__post_init__ turns it into ``WeightTransferConfig``,
    vllm/engine/arg_utils.py) so this stays importless and picklable across Ray."""
    return {"weight_transfer_config": {"backend": "nccl"}}


def tensor_meta(named_tensors: Sequence[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    """(name, dtype string as vLLM spells it, e.g. "bfloat16", shape) for each tensor."""
    return [
        (n, str(t.dtype).split(".")[-1], tuple(int(d) for d in t.shape)) for n, t in named_tensors
    ]


class NCCLWeightSender:
    """Learner rank 0's end of the group. Call ``connect`` once, ``send`` per sync, ``close``."""

    def __init__(self, master_address: str, master_port: int, num_receivers: int) -> None:
        if num_receivers < 1:
            raise ValueError(f"num_receivers must be >= 1, got {num_receivers}")
        self.master_address = master_address
        self.master_port = int(master_port)
        self.world_size = 1 + int(num_receivers)
        self._group: Any = None  # PyNcclCommunicator once connected

    def connect(self) -> None:
        """Open rank 0 on the current CUDA device; blocks until every receiver has joined."""
        from vllm.distributed.weight_transfer.nccl_common import trainer_init

        if self._group is not None:
            raise RuntimeError("NCCLWeightSender.connect() called twice")
        rendezvous = {
            "master_address": self.master_address,
            "master_port": self.master_port,
            "world_size": self.world_size,
        }
        self._group = trainer_init(rendezvous, rank=_SRC)

    def send(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Broadcast the tensors packed into ~1 GiB chunks, as vLLM's trainer engine does."""
        import torch
        from vllm.distributed.weight_transfer.packed_tensor import (
            packed_nccl_broadcast_producer,
        )

        if self._group is None:
            raise RuntimeError("NCCLWeightSender.send() before connect()")
        wire = _wire_params()
        device = self._group.device

        def to_wire(item: tuple[str, torch.Tensor]) -> torch.Tensor:
            # The communicator only sends from its own device; `.to` is a no-op when already there.
            return item[1].detach().to(device)

        with torch.no_grad():
            # The producer packs on its own side streams without waiting on ours, so the
            # learner's pending work (the optimizer step) must have landed first.
            torch.cuda.current_stream().synchronize()
            packed_nccl_broadcast_producer(
                iterator=iter(named_tensors),
                group=self._group,
                src=_SRC,
                post_iter_func=to_wire,
                buffer_size_bytes=wire["packed_buffer_size_bytes"],
                num_buffers=wire["packed_num_buffers"],
            )  # drains its streams before returning, so the caller may mutate params now

    def close(self) -> None:
        if self._group is not None:
            self._group.destroy()
            self._group = None


def _init_payload(
    master_address: str, master_port: int, rank_offset: int, world_size: int
) -> dict[str, Any]:
    """The ``init_info`` dict the worker's ``init_weight_transfer_engine`` parses."""
    from vllm.distributed.weight_transfer.nccl_common import (
        NCCLWeightTransferInitInfo,
        worker_init_payload,
    )

    if rank_offset < 1:
        raise ValueError(f"rank_offset must be >= 1 (rank 0 is the sender), got {rank_offset}")
    info = NCCLWeightTransferInitInfo(  # validates the rendezvous fields here, not in the worker
        master_address=master_address,
        master_port=int(master_port),
        rank_offset=int(rank_offset),
        world_size=int(world_size),
        **_wire_params(),
    )
    return worker_init_payload(info)


def _update_info(meta: Sequence[TensorMeta]) -> dict[str, Any]:
    """The ``update_info`` dict the worker's ``update_weights`` parses (plain lists: it may
    cross a msgpack boundary to the engine core)."""
    from dataclasses import asdict

    import torch
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo

    for name, dtype_name, _ in meta:
        # The worker does getattr(torch, dtype_name) mid-transfer; fail before any collective.
        if not isinstance(getattr(torch, dtype_name, None), torch.dtype):
            raise ValueError(f"{name}: {dtype_name!r} is not a torch dtype name")
    info = NCCLWeightTransferUpdateInfo(
        names=[m[0] for m in meta],
        dtype_names=[m[1] for m in meta],
        shapes=[[int(d) for d in m[2]] for m in meta],
    )
    return asdict(info)


def receiver_connect(
    llm: Any, master_address: str, master_port: int, rank_offset: int, world_size: int
) -> None:
    """Join every worker of this ``vllm.LLM`` to the group (collective with the sender),
    leaving the group it was in before, if any (a restarted learner's new group)."""
    payload = _init_payload(master_address, master_port, rank_offset, world_size)
    workers = llm.get_world_size(include_dp=True)  # vllm/entrypoints/llm.py
    if rank_offset + workers > world_size:
        raise ValueError(
            f"ranks {rank_offset}..{rank_offset + workers - 1} exceed world_size {world_size}"
        )
    # the old sender is dead: vLLM aborts the old communicator (ncclCommAbort, which waits on
    # no peer; gpu_worker.shutdown_weight_transfer_engine); nothing to release the first time
    llm.collective_rpc("shutdown_weight_transfer_engine")
    llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": payload})


def receiver_update(llm: Any, meta: list[TensorMeta], version: int) -> None:
    """Receive one broadcast into the engine's model (collective with ``sender.send``)."""
    update_info = _update_info(meta)
    # start -> update -> finish is the layerwise-reload lifecycle (nccl_engine.py); on failure
    # the worker already dropped its session (gpu_worker.update_weights), so no finish then.
    llm.collective_rpc("start_weight_update")
    llm.collective_rpc("update_weights", kwargs={"update_info": update_info})
    llm.collective_rpc("finish_weight_update")
    # vllm.LLM has no finish_weight_update(weight_version=...); AsyncLLM's does exactly this.
    llm.llm_engine.set_weight_version(str(version))
    # Cached KV blocks were computed with the old weights.
    if not llm.reset_prefix_cache():
        raise RuntimeError("vLLM refused to reset its prefix cache after the weight update")
