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
    assert [c[0] for c in llm.calls] == ["init_weight_transfer_engine"]
    assert llm.calls[0][1]["init_info"]["rank_offset"] == 2
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
