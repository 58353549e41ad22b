"""The roofline arithmetic of ``bench/bf16.py``, on the built-in model's shapes (hidden 128,
4 layers of 4 heads of 32, MLP 512, a 614-token vocabulary), against numbers worked by hand."""

from bench.bf16 import matmul_flops, model_shapes, step_flops
from ray_s3ft.model.paths import resolve_model_path


def test_model_shapes_of_the_builtin_model():
    shapes, sizes = model_shapes(resolve_model_path("builtin"))
    assert sizes == {"hidden": 128, "layers": 4, "vocab": 614}
    # per layer: q, k, v, o 4 x 128 x 128 = 65,536; gate, up 2 x 128 x 512 = 131,072;
    # down 512 x 128 = 65,536: 262,144; four layers 1,048,576; the LM head 128 x 614 = 78,592
    assert sum(k * n * c for k, n, c in shapes) == 1_127_168


def test_step_flops_by_hand():
    shapes, sizes = model_shapes(resolve_model_path("builtin"))
    # two sequences of 3 and 5 tokens: 8 tokens; attention 12 x 4 x 128 x (9 + 25) = 208,896
    assert step_flops(shapes, sizes, [3, 5], lora=False) == 6 * 1_127_168 * 8 + 208_896
    assert step_flops(shapes, sizes, [3, 5], lora=True) == 4 * 1_127_168 * 8 + 208_896


def test_matmul_flops_runs_at_the_given_depth_and_dtype():
    out = matmul_flops([(8, 4, 3)], rows=2, dtype="float32", threads=1, repeats=1)
    assert out["rows"] == 2 and out["dtype"] == "float32"
    assert out["flops_per_s"] > 0
