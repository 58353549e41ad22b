"""bench/gpu: what goes to the GPU machine must fit the 64 MiB it takes (``build_wheels``), and
the shapes ``check`` builds are Qwen2.5-0.5B's and -1.5B's."""

import pytest

from bench.gpu.build_wheels import LIMIT, check_size

MIB = 2**20


def test_size_within_limit_is_the_sum():
    assert LIMIT == 64 * MIB
    assert check_size({"tree/a.py": 10 * MIB, "wheels/ds.whl": 54 * MIB}) == 64 * MIB


def test_size_over_limit_names_the_largest():
    sizes = {"tree/a.py": 1, "wheels/ds.whl": 40 * MIB, "wheels/vllm.whl": 24 * MIB}
    with pytest.raises(ValueError, match=r"64\.0 MiB to carry.*largest: wheels/ds.whl 40\.0 MiB"):
        check_size(sizes)


@pytest.mark.parametrize(
    "name, matmul_params",
    [
        # per layer q, o 896 x 896; k, v 896 x 128 (2 heads of 64); gate, up, down 896 x 4864:
        # 14,909,440; 24 layers 357,826,560; the (tied) LM head 896 x 151,936 = 136,134,656
        ("0.5b", 493_961_216),
        # per layer q, o 1536 x 1536; k, v 1536 x 256 (2 heads of 128); MLP 3 x 1536 x 8960:
        # 46,792,704; 28 layers 1,310,195,712; the LM head 1536 x 151,936 = 233,373,696
        ("1.5b", 1_543_569_408),
    ],
)
def test_qwen_shapes_by_hand(tmp_path, name, matmul_params):
    from bench.bf16 import model_shapes
    from bench.gpu.check import qwen2_config

    qwen2_config(name).save_pretrained(tmp_path)  # the config alone: no weights built
    shapes, sizes = model_shapes(str(tmp_path))
    assert sum(k * n * c for k, n, c in shapes) == matmul_params
    assert sizes["vocab"] == 151_936
