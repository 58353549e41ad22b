"""Packing weights for the object store: bit-exact round trips, views rather than copies."""

import numpy as np
import torch

from ray_s3ft.workers.weights import is_packed, pack, unpack


def test_pack_unpack_round_trips_every_dtype_bit_for_bit():
    state = {
        "a": torch.randn(3, 4),
        "b": torch.randn(5).to(torch.bfloat16),
        "c": torch.randn(2, 2).to(torch.float16),
    }
    packed = pack(state)
    assert is_packed(packed) and not is_packed(state) and not is_packed({})
    assert packed["b"][0].dtype == np.int16 and packed["b"][1] == "bfloat16"
    back = unpack(packed)
    for k, t in state.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k


def test_pack_makes_views_not_copies():
    t = torch.zeros(4)
    packed = pack({"w": t})
    t[0] = 7.0  # a view sees the change; a copy would not
    assert packed["w"][0][0] == 7.0
    assert unpack(packed)["w"].data_ptr() == packed["w"][0].ctypes.data
