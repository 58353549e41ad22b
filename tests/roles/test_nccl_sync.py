"""CPU-checkable parts of the NCCL weight sync (ray_s3ft.workers.nccl_sync).

The broadcast itself needs CUDA + NCCL + GPU vLLM; here we check that the module imports
cheaply, that its metadata matches the tensors, and that every dict it hands to vLLM is
accepted by vLLM 0.32's own config / init-info / update-info parsers. No engine is started.
"""

import math
import subprocess
import sys

import pytest
import torch

from ray_s3ft.model.paths import resolve_model_path
from ray_s3ft.workers import nccl_sync


def _named() -> list[tuple[str, torch.Tensor]]:
    return [
        ("model.embed_tokens.weight", torch.zeros(11, 4, dtype=torch.bfloat16)),
        ("model.layers.0.mlp.down_proj.weight", torch.ones(4, 6, dtype=torch.float16)),
        ("model.norm.weight", torch.ones(4)),
        ("lm_head.bias", torch.zeros(0, dtype=torch.float32)),
        ("scalar", torch.tensor(3, dtype=torch.int64)),
    ]


def test_import_is_cheap():
    code = "import sys, ray_s3ft.workers.nccl_sync; print([m for m in ('torch', 'vllm') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tensor_meta_names_dtypes_shapes():
    named = _named()
    meta = nccl_sync.tensor_meta(named)
    assert meta == [
        ("model.embed_tokens.weight", "bfloat16", (11, 4)),
        ("model.layers.0.mlp.down_proj.weight", "float16", (4, 6)),
        ("model.norm.weight", "float32", (4,)),
        ("lm_head.bias", "float32", (0,)),
        ("scalar", "int64", ()),
    ]
    for _, dtype_name, shape in meta:
        assert all(type(d) is int for d in shape)
        assert isinstance(getattr(torch, dtype_name), torch.dtype)
    # The receiver cuts its chunks from these byte sizes (packed_tensor.py); the sender from
    # the tensors themselves. They must agree.
    for (_, t), (_, dtype_name, shape) in zip(named, meta):
        assert (
            math.prod(shape) * getattr(torch, dtype_name).itemsize == t.numel() * t.element_size()
        )


def test_engine_kwargs_accepted_by_vllm_config():
    from vllm.config import WeightTransferConfig
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine
    from vllm.engine.arg_utils import EngineArgs

    kwargs = nccl_sync.vllm_engine_kwargs()
    assert set(kwargs) == {"weight_transfer_config"}
    assert WeightTransferConfig(**kwargs["weight_transfer_config"]).backend == "nccl"
    # a local model directory: EngineArgs must not look anything up on the hub
    args = EngineArgs(model=resolve_model_path("builtin"), **kwargs)
    assert isinstance(args.weight_transfer_config, WeightTransferConfig)
    assert args.weight_transfer_config.backend == "nccl"
    # gpu_worker.load_model builds the engine through this registry.
    engine_cls = WeightTransferEngineFactory._registry["nccl"]()
    assert engine_cls is NCCLWeightTransferEngine


def test_init_payload_accepted_by_worker_init_info():
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine
    from vllm.distributed.weight_transfer.packed_tensor import (
        DEFAULT_PACKED_BUFFER_SIZE_BYTES,
        DEFAULT_PACKED_NUM_BUFFERS,
    )

    payload = nccl_sync._init_payload("10.0.0.1", 29555, rank_offset=3, world_size=5)
    engine = object.__new__(NCCLWeightTransferEngine)  # parse_* only read class attributes
    info = engine.parse_init_info(payload)
    assert (info.master_address, info.master_port) == ("10.0.0.1", 29555)
    assert (info.rank_offset, info.world_size) == (3, 5)
    assert info.nccl_unique_id_bytes is None  # TCPStore rendezvous mode
    # The sender packs with the same parameters (vLLM's defaults).
    assert info.packed is True
    assert info.packed_buffer_size_bytes == DEFAULT_PACKED_BUFFER_SIZE_BYTES
    assert info.packed_num_buffers == DEFAULT_PACKED_NUM_BUFFERS
    with pytest.raises(ValueError):
        nccl_sync._init_payload("10.0.0.1", 29555, rank_offset=0, world_size=5)


def test_update_info_accepted_by_worker_update_info():
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLWeightTransferEngine,
        NCCLWeightTransferUpdateInfo,
    )
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    meta = nccl_sync.tensor_meta(_named())
    update = nccl_sync._update_info(meta)
    # It may cross the engine-core msgpack boundary (collective_rpc); survive that unchanged.
    update = MsgpackDecoder().decode(MsgpackEncoder().encode(update))
    engine = object.__new__(NCCLWeightTransferEngine)
    info = engine.parse_update_info(update)
    assert isinstance(info, NCCLWeightTransferUpdateInfo)
    assert info.names == [m[0] for m in meta]
    assert info.dtype_names == [m[1] for m in meta]
    assert info.shapes == [list(m[2]) for m in meta]
    with pytest.raises(ValueError, match="not a torch dtype"):
        nccl_sync._update_info([("w", "float99", (2,))])


class _FakeEngine:
    def __init__(self) -> None:
        self.version: str | None = None

    def set_weight_version(self, version: str) -> None:
        self.version = version


class _FakeLLM:
    """Records what the receiver functions ask of a vllm.LLM."""

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers
        self.calls: list[tuple[str, dict | None]] = []
        self.llm_engine = _FakeEngine()
        self.prefix_resets = 0

    def get_world_size(self, include_dp: bool = True) -> int:
        return self.workers

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append((method, kwargs))
        return [None] * self.workers

    def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False) -> bool:
        self.prefix_resets += 1
        return True


def test_receiver_calls_worker_methods_in_order():
    llm = _FakeLLM(workers=2)
    nccl_sync.receiver_connect(llm, "10.0.0.1", 29555, rank_offset=2, world_size=4)
    # an engine leaves the group it was in first (none here: a no-op in vLLM)
    assert [c[0] for c in llm.calls] == [
        "shutdown_weight_transfer_engine",
        "init_weight_transfer_engine",
    ]
    assert llm.calls[1][1]["init_info"]["rank_offset"] == 2
    with pytest.raises(ValueError, match="exceed world_size"):
        nccl_sync.receiver_connect(llm, "10.0.0.1", 29555, rank_offset=3, world_size=4)

    llm.calls.clear()
    meta = nccl_sync.tensor_meta(_named())
    nccl_sync.receiver_update(llm, meta, version=7)
    assert [c[0] for c in llm.calls] == [
        "start_weight_update",
        "update_weights",
        "finish_weight_update",
    ]
    assert llm.calls[1][1]["update_info"]["names"] == [m[0] for m in meta]
    assert llm.llm_engine.version == "7"
    assert llm.prefix_resets == 1


def test_sender_validates_before_touching_nccl():
    with pytest.raises(ValueError):
        nccl_sync.NCCLWeightSender("127.0.0.1", 29555, num_receivers=0)
    sender = nccl_sync.NCCLWeightSender("127.0.0.1", 29555, num_receivers=3)
    assert sender.world_size == 4
    with pytest.raises(RuntimeError, match="before connect"):
        sender.send(_named())
    sender.close()  # no-op when never connected


# ------------------------------------------------------------------ a learner restart on GPU
# The recovery code, the groups, both actors' NCCL methods and this module run as they do on a
# GPU; only NCCL itself is replaced: vLLM's ``trainer_init`` and broadcast producer on the
# learner's side, the engine's worker RPCs (``_WiredLLM``) on the other.


class _Wire:
    """NCCL groups by rendezvous port: a broadcast reaches the ranks that joined its group,
    and only a complete group broadcasts (a real one would hang)."""

    def __init__(self) -> None:
        self.groups: dict[int, dict] = {}

    def join(self, port: int, rank: int, world: int) -> None:
        group = self.groups.setdefault(port, {"world": world, "ranks": set(), "sent": None})
        assert group["world"] == world and rank not in group["ranks"]
        group["ranks"].add(rank)


class _Comm:
    """The sender's communicator (``PyNcclCommunicator``)."""

    device = torch.device("cpu")

    def __init__(self, wire: _Wire, port: int) -> None:
        self.wire, self.port = wire, port

    def destroy(self) -> None:
        pass


class _WiredLLM(_FakeLLM):
    """A ``vllm.LLM`` whose worker RPCs join, leave and receive through ``_Wire``."""

    def __init__(self, wire: _Wire) -> None:
        super().__init__(workers=1)
        self.wire, self.port, self.weights = wire, None, {}

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append((method, kwargs))
        if method == "shutdown_weight_transfer_engine":
            self.port = None
        elif method == "init_weight_transfer_engine":
            info = kwargs["init_info"]
            self.wire.join(info["master_port"], info["rank_offset"], info["world_size"])
            self.port = info["master_port"]
        elif method == "update_weights":
            assert self.port is not None, "not in a weight-transfer group"
            sent = self.wire.groups[self.port]["sent"]
            assert [n for n, _ in sent] == kwargs["update_info"]["names"]
            self.weights = dict(sent)
        return [None]


def test_a_learner_restart_under_nccl_sync_rejoins_the_engines(monkeypatch):
    """A learner rank dies on a GPU run: the new learner group's rank 0 opens a new transfer
    group, both engines leave the old one and join it, and the next sync carries the restored
    checkpoint's weights to them."""
    from pathlib import Path
    from types import SimpleNamespace

    from ray.exceptions import ActorDiedError
    from vllm.distributed.weight_transfer import nccl_common, packed_tensor

    from ray_s3ft.config.schema import GRPOConfig, LearnerConfig, ModelConfig
    from ray_s3ft.errors import RunFailed
    from ray_s3ft.run.cluster import Groups, _connect_nccl
    from ray_s3ft.run.controller import TrainState
    from ray_s3ft.run.recovery import Recovery
    from ray_s3ft.run.weight_sync import WeightSync
    from ray_s3ft.workers.group import ActorDied, ActorGroup
    from ray_s3ft.workers.learner import LearnerActor
    from ray_s3ft.workers.rollout import RolloutWorker

    wire = _Wire()

    def trainer_init(rendezvous, rank=0):
        wire.join(rendezvous["master_port"], rank, rendezvous["world_size"])
        return _Comm(wire, rendezvous["master_port"])

    def producer(iterator, group, src, post_iter_func, **wire_params):
        g = wire.groups[group.port]
        assert len(g["ranks"]) == g["world"], "a broadcast to a group not everyone joined"
        g["sent"] = [(name, post_iter_func((name, t)).clone()) for name, t in iterator]

    monkeypatch.setattr(nccl_common, "trainer_init", trainer_init)
    monkeypatch.setattr(packed_tensor, "packed_nccl_broadcast_producer", producer)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: SimpleNamespace(synchronize=int))

    class Engine(RolloutWorker):  # a rollout worker whose vLLM is wired to _Wire
        def __init__(self) -> None:
            self.engine, self.version = SimpleNamespace(llm=_WiredLLM(wire)), 0

    def learners(wait_s: float = 600.0) -> ActorGroup:
        """One set-up learner rank whose DeepSpeed engine is a plain 2 x 2 weight."""
        group = ActorGroup(LearnerActor, 1, name="learner", local=True, kwargs=dict(
            rank=0, world_size=1, model_path="", model=ModelConfig(), cfg=LearnerConfig(),
            grpo=GRPOConfig(), lr=1e-3, weight_decay=0.0, seed=0,
        ))  # fmt: skip
        rank = group.actors[0]
        rank.device = torch.device("cpu")
        rank.engine = SimpleNamespace(module=torch.nn.Linear(2, 2, bias=False))
        return group

    def load(value: float) -> None:  # a checkpoint's weights into rank 0
        torch.nn.init.constant_(groups.learner.actors[0].engine.module.weight, value)

    rollout = ActorGroup(Engine, 2, name="rollout", local=True)
    groups = Groups(rollout=rollout, judge=None, learner=learners(), new_learner=learners)
    groups.nccl_meta = _connect_nccl(groups)  # as cluster.launch does
    assert groups.nccl_meta == [("weight", "float32", (2, 2))]
    load(5.0)
    sync = WeightSync(groups.learner, rollout, groups.nccl_meta)
    sync.to(5)

    class Run(Recovery):
        cfg = SimpleNamespace(trainer=SimpleNamespace(max_learner_restarts=2, node_wait_s=30))
        g, weights, state, schedule = groups, sync, TrainState(step=7, version=5), None
        sampler = SimpleNamespace(discard=lambda: None)
        last_checkpoint, run_dir = Path("/runs/x/checkpoints/step_4"), Path("/runs/x")

        def _new_schedule(self):
            return "schedule"

        def restore(self, ckpt: Path) -> None:
            self.state = TrainState(step=4, version=4)
            load(4.0)

    old_learner, old_port = groups.learner, groups.learner.actors[0]._sender.master_port
    run = Run()
    run.restart_learner(ActorDied("learner", ActorDiedError()))
    assert groups.learner is not old_learner and run.weights.learner is groups.learner
    assert run.state.faults["learner_restarts"] == 1 and run.weights.version == -1
    new_port = groups.learner.actors[0]._sender.master_port
    for i, engine in enumerate(rollout.actors):
        llm = engine.engine.llm
        assert [c[0] for c in llm.calls[-2:]] == [
            "shutdown_weight_transfer_engine",
            "init_weight_transfer_engine",
        ]
        init = llm.calls[-1][1]["init_info"]
        assert (init["master_port"], init["rank_offset"], init["world_size"]) == (
            new_port,
            1 + i,
            3,
        )
    assert wire.groups[new_port]["ranks"] == {0, 1, 2}

    sync.to(run.state.version)  # what the next step's sync does
    for engine in rollout.actors:
        assert engine.version == 4 and engine.engine.llm.llm_engine.version == "4"
        assert engine.engine.llm.weights["weight"].tolist() == [[4.0, 4.0], [4.0, 4.0]]
    assert wire.groups[old_port]["sent"][0][1].tolist() == [[5.0, 5.0], [5.0, 5.0]]

    # a new group the engines cannot join: the run stops with how to resume, not a traceback
    monkeypatch.setattr(_WiredLLM, "collective_rpc", lambda *a, **k: 1 / 0)
    with pytest.raises(RunFailed) as e:
        run.restart_learner(ActorDied("learner", ActorDiedError()))
    assert "could not form the NCCL weight-sync group (ZeroDivisionError" in str(e.value)
    assert "resume from it with:\n  ray-s3ft train --config /runs/x/config.yaml" in str(e.value)
