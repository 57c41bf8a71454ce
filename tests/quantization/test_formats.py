"""Storage formats: GGUF blocks unpacked bit-equal to the gguf package, int8/fp8 quantization
bounds, each format's matmul against its own dequantized weight, the quantized layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from jaxllm.config import QuantizationConfig
from jaxllm.quantization import normalize_method
from jaxllm.quantization.formats import FORMATS, get_format
from jaxllm.quantization.gguf_blocks import GGUF_BLOCKS, dequantize_rows, row_bytes
from jaxllm.quantization.layout import quantize_params, quantized_leaves


def random_blocks(ggml_type: str, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Valid GGUF blocks [n, row_bytes] of `ggml_type`: quantized by the gguf package where it
    can, else random bytes with small finite float16 scales (the K-quants)."""
    rng = np.random.default_rng(seed)
    kind = GGMLQuantizationType[ggml_type.upper()]
    if ggml_type in ("q8_0", "q4_0", "q4_1"):
        return quantize(rng.standard_normal((n, k)).astype(np.float32), kind)
    elems, nbytes = GGUF_BLOCKS[ggml_type]
    b = rng.integers(0, 256, (n, k // elems, nbytes), dtype=np.uint8)
    scales = (rng.random((n, k // elems, 2)) * 0.02 + 0.001).astype(np.float16).view(np.uint8)
    if ggml_type == "q4_k":  # d, dmin lead the block
        b[..., 0:4] = scales.reshape(n, k // elems, 4)
    else:  # q6_k: d ends it
        b[..., 208:210] = scales.reshape(n, k // elems, 4)[..., :2]
    return b.reshape(n, -1)


@pytest.mark.parametrize("ggml_type", list(GGUF_BLOCKS))
def test_gguf_rows_bit_equal_to_gguf_package(ggml_type):
    blocks = random_blocks(ggml_type, 6, 512)
    want = dequantize(blocks, GGMLQuantizationType[ggml_type.upper()])
    got = np.asarray(jax.jit(dequantize_rows, static_argnums=1)(jnp.asarray(blocks), ggml_type))
    assert got.shape == (6, 512)
    np.testing.assert_array_equal(got, want)


def test_row_bytes_names_the_numbers():
    assert row_bytes("q4_1", 576) == 18 * 20
    with pytest.raises(ValueError, match="576 elements.*256-element blocks"):
        row_bytes("q4_k", 576)


@pytest.mark.parametrize("name, rel", [("int8", 1 / 254), ("fp8", 1 / 16)])
def test_channel_scaled_quantization_bound(name, rel):
    """Each weight is within half a quantization step of the per-column max (int8: 1/254 of it;
    e4m3: 3 mantissa bits, a relative step of 1/8 at most, half of it 1/16)."""
    fmt = get_format(name)
    w = np.random.default_rng(1).standard_normal((2, 64, 40)).astype(np.float32)
    leaves = fmt.quantize(w)
    assert leaves[fmt.data_leaf()].shape == (2, 64, 40)
    assert leaves["kernel_scale"].shape == (2, 40)
    back = np.asarray(fmt.dequantize(leaves))
    err = np.abs(back - w)
    if name == "int8":
        assert (err <= np.abs(w).max(axis=-2, keepdims=True) * rel * 1.0001).all()
    else:
        assert (err <= np.abs(w) * rel + 1e-6).all()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_matmul_equals_its_dequantized_weight(name):
    """XLA's path: x @ dequantize(leaves), up to float32 summation order (fp8: x is quantized
    per token too, so the reference quantizes x the same way)."""
    fmt = get_format(name)
    k, n = (512, 48)
    rng = np.random.default_rng(2)
    if name in GGUF_BLOCKS:
        leaves = {fmt.data_leaf(): jnp.asarray(random_blocks(name, n, k))}
    else:
        leaves = fmt.quantize(rng.standard_normal((k, n)).astype(np.float32))
    x = jnp.asarray(rng.standard_normal((5, k)), jnp.float32)
    y = jax.jit(lambda x, lv: fmt.matmul(x, lv, n, False))(x, leaves)
    w = np.asarray(fmt.dequantize(leaves), np.float64)
    xr = np.asarray(x, np.float64)
    if name == "fp8":
        amax = np.abs(xr).max(-1, keepdims=True)
        xs = amax / 448.0
        xr = (
            np.asarray(jnp.asarray(xr / xs, jnp.float32).astype(jnp.float8_e4m3fn), np.float64) * xs
        )
    want = xr @ w
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_quantized_layout_shapes_and_axes():
    kernel = ("layers", "mlp", "down_proj", "kernel")
    axes = ("layers", "mlp", "embed")
    (q, s) = quantized_leaves(kernel, (3, 1536, 576), axes, "int8")
    assert q == (kernel[:-1] + ("kernel_int8",), (3, 1536, 576), jnp.int8, axes)
    assert s == (kernel[:-1] + ("kernel_scale",), (3, 576), jnp.float32, ("layers", "embed"))
    ((path, shape, dtype, gaxes),) = quantized_leaves(kernel, (3, 1536, 576), axes, "q4_1")
    assert path[-1] == "kernel_q4_1" and shape == (3, 576, 1536 // 32 * 20)
    assert dtype == jnp.uint8 and gaxes == ("layers", "embed", "mlp")  # [out, row_bytes]
    emb = ("embed_tokens", "embedding")
    ((path, shape, _, eaxes),) = quantized_leaves(emb, (49152, 576), ("vocab", "embed"), "q8_0")
    assert path == ("embed_tokens", "embedding_q8_0") and shape == (49152, 18 * 34)
    assert eaxes == ("vocab", "embed")
    with pytest.raises(ValueError, match="cannot store"):
        quantized_leaves(emb, (49152, 576), None, "int8")


def test_quantize_params_replaces_the_listed_leaves():
    rng = np.random.default_rng(3)
    params = {
        "layers": {"mlp": {"up_proj": {"kernel": jnp.asarray(rng.standard_normal((2, 64, 32)))}}},
        "norm": {"scale": jnp.ones(64)},
    }
    q = QuantizationConfig("int8", ((("layers", "mlp", "up_proj", "kernel"), "int8"),))
    out = quantize_params(params, q)
    assert set(out["layers"]["mlp"]["up_proj"]) == {"kernel_int8", "kernel_scale"}
    assert "kernel" in params["layers"]["mlp"]["up_proj"]  # the input is not changed
    assert out["norm"]["scale"] is params["norm"]["scale"]


def test_gguf_k_quants_cannot_be_made_from_float():
    with pytest.raises(ValueError, match="q4_k is not supported"):
        get_format("q4_k").quantize(np.zeros((256, 8), np.float32))


def test_method_names():
    assert normalize_method(None) is None and normalize_method("FP8") == "fp8"
    with pytest.raises(ValueError, match="'awq' is not supported.*fp8.*int8.*gguf"):
        normalize_method("awq")


def test_gguf_split_over_tp_needs_whole_blocks():
    get_format("q4_1").check_split(1536, 4, "down_proj")  # 48 blocks over 4
    with pytest.raises(
        ValueError, match="18 blocks do not split evenly over tensor_parallel_size=4"
    ):
        get_format("q4_1").check_split(576, 4, "o_proj")


def test_fused_projections_join_shared_formats_only():
    from jaxllm.models.packed_params import fuse_projections

    q4 = lambda n: {"kernel_q4_1": jnp.zeros((2, n, 40), jnp.uint8)}  # noqa: E731
    i8 = lambda n: {  # noqa: E731
        "kernel_int8": jnp.zeros((2, -(-n // 16), 64, 16), jnp.int8),
        "kernel_scale": jnp.ones((2, n)),
    }
    packed = {
        "self_attn": {"q_proj": q4(64), "k_proj": q4(32), "v_proj": q4(32), "o_proj": q4(64)},
        "mlp": {"gate_proj": i8(96), "up_proj": i8(96), "down_proj": i8(64)},
    }
    fuse_projections(packed, {})
    assert set(packed["self_attn"]) == {"qkv_proj", "o_proj"}
    assert packed["self_attn"]["qkv_proj"]["kernel_q4_1"].shape == (2, 128, 40)
    gate_up = packed["mlp"]["gate_up_proj"]
    assert gate_up["kernel_int8"].shape == (2, 12, 64, 16) and gate_up["kernel_scale"].shape == (
        2,
        192,
    )
    # a partial last strip (width 40), mixed formats or a bias keep the projections apart
    packed = {"mlp": {"gate_proj": i8(40), "up_proj": i8(40)}}
    fuse_projections(packed, {})
    assert set(packed["mlp"]) == {"gate_proj", "up_proj"}
    packed = {"self_attn": {"q_proj": q4(64), "k_proj": i8(32), "v_proj": q4(32)}}
    fuse_projections(packed, {})
    assert "qkv_proj" not in packed["self_attn"]
    packed = {"self_attn": {"q_proj": q4(64), "k_proj": q4(32), "v_proj": q4(32)}}
    fuse_projections(packed, {"self_attn": {"q_proj": {"bias": jnp.zeros((2, 64))}}})
    assert "qkv_proj" not in packed["self_attn"]
