"""cpu_ext's matmuls over quantized weights (`cpu_ext.quant_matmul`) against float64 numpy.

- GGUF blocks of every supported type (Q8_0, Q4_0, Q4_1 from gguf-py's quantizer; Q4_K and Q6_K,
  which it cannot quantize, as random bytes with small finite float16 scales) at SmolLM2's shapes
  and a partial last strip, for row counts on both kernel paths (up to 4 rows of x: dequantized in
  registers; more: dequantized strips), inside jit, with leading batch dims.
- Dequantization bit for bit gguf-py's: one-hot rows of x read W's columns exactly, with every
  finite float16 bit pattern (subnormals too) as a block's scale (and min).
- int8 strips with per-column scales, including a partial last strip.
- Bad input: ValueErrors naming the argument, and the kernel's own errors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ragged_batches import rng_for

from cpu_ext import registry

pytestmark = pytest.mark.skipif(
    bool(registry.missing_requirements()),
    reason=f"cpu_ext cannot run here: {registry.missing_requirements()}",
)

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402
from gguf.quants import quantize  # noqa: E402

from cpu_ext.packed_matmul import pack_kernel  # noqa: E402
from cpu_ext.quant_matmul import (  # noqa: E402
    GGML_TYPE_IDS,
    GGUF_BLOCKS,
    dequantize_gguf,
    gguf_matmul,
    int8_matmul,
    reference_gguf_matmul,
    reference_int8_matmul,
)

TYPES = tuple(GGUF_BLOCKS)
ROWS = (1, 2, 3, 4, 5, 16, 67)  # both paths: <= 4 rows in registers, more through strips
# Byte offsets of a block's float16 scale fields (d, and dmin / m where the type has one).
HALF_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q4_1": (0, 2), "q4_k": (0, 2), "q6_k": (208,)}


def gguf_blocks(rng, ggml_type: str, n: int, k: int) -> np.ndarray:  # [n, k / elems * bytes]
    """Block bytes of an [n, k] weight: gguf-py's quantizer of random normals where it has one,
    else random bytes whose float16 scale fields hold small finite values."""
    try:
        w = rng.standard_normal((n, k)).astype(np.float32)
        return quantize(w, GGMLQuantizationType[ggml_type.upper()])
    except NotImplementedError:
        pass
    elems, nbytes = GGUF_BLOCKS[ggml_type]
    blocks = rng.integers(0, 256, (n, k // elems, nbytes), dtype=np.uint8)
    for off in HALF_FIELDS[ggml_type]:
        half = rng.uniform(1e-4, 1e-2, (n, k // elems)).astype(np.float16)
        blocks[..., off : off + 2] = half[..., None].view(np.uint8)
    return blocks.reshape(n, -1)


@functools.cache
def _gguf(ggml_type):
    return jax.jit(functools.partial(gguf_matmul, ggml_type=ggml_type))


@functools.cache
def _int8(n):
    return jax.jit(functools.partial(int8_matmul, n=n))


def assert_close(got, expected):
    """float32 accumulation against float64: error ~ sqrt(K) eps relative to the output's scale."""
    assert got.shape == expected.shape and got.dtype == np.float32
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)


def test_block_tables_are_ggmls():
    for name, (elems, nbytes) in GGUF_BLOCKS.items():
        qtype = GGMLQuantizationType[name.upper()]
        assert GGML_QUANT_SIZES[qtype] == (elems, nbytes) and GGML_TYPE_IDS[name] == qtype.value


@pytest.mark.parametrize("ggml_type", TYPES)
@pytest.mark.parametrize("K, N", [(576, 1536), (1536, 576), (576, 192), (512, 37)])
def test_gguf_matmul_matches_float64(ggml_type, K, N):
    if K % GGUF_BLOCKS[ggml_type][0]:
        K = 768  # a multiple of the K-quants' 256 near SmolLM2's 576
    rng = rng_for("gguf", ggml_type, K, N)
    w = gguf_blocks(rng, ggml_type, N, K)
    for M in ROWS:
        x = rng.standard_normal((M, K)).astype(np.float32)
        got = np.asarray(_gguf(ggml_type)(jnp.asarray(x), jnp.asarray(w)))
        assert_close(got, reference_gguf_matmul(x, w, ggml_type=ggml_type))


@pytest.mark.parametrize("ggml_type", TYPES)
def test_gguf_dequantization_is_gguf_pys_bit_for_bit(ggml_type):
    """One-hot rows of x give columns of W exactly (0 * w adds nothing), so y equals gguf-py's
    dequantized W bit for bit; the scale fields run through every finite float16 pattern."""
    elems, nbytes = GGUF_BLOCKS[ggml_type]
    K = 2 * elems
    rng = rng_for("gguf-exact", ggml_type)
    halves = np.arange(1 << 16, dtype=np.uint16)
    finite = halves[(halves & 0x7C00) != 0x7C00]
    N = -(-finite.size // (K // elems)) // 16 * 16 + 5  # every pattern; a partial last strip
    blocks = rng.integers(0, 256, (N, K // elems, nbytes), dtype=np.uint8)
    for off in HALF_FIELDS[ggml_type]:
        patterns = np.resize(rng.permutation(finite), (N, K // elems, 1))
        blocks[..., off : off + 2] = patterns.view(np.uint8)
    w = blocks.reshape(N, -1)
    W = dequantize_gguf(w, ggml_type)
    for M in (3, 6):  # the register path, then the strip path
        cols = rng.integers(0, K, M)
        x = np.zeros((M, K), np.float32)
        x[np.arange(M), cols] = 1.0
        got = np.asarray(_gguf(ggml_type)(jnp.asarray(x), jnp.asarray(w)))
        np.testing.assert_array_equal(got, W[:, cols].T)


def test_gguf_matmul_leading_dims():
    rng = rng_for("gguf-lead")
    w = gguf_blocks(rng, "q4_1", 40, 64)
    for shape in ((2, 1, 64), (2, 3, 64)):
        x = rng.standard_normal(shape).astype(np.float32)
        got = np.asarray(_gguf("q4_1")(jnp.asarray(x), jnp.asarray(w)))
        assert got.shape == (*shape[:-1], 40)
        assert_close(got, reference_gguf_matmul(x, w, ggml_type="q4_1"))


@pytest.mark.parametrize("K, N", [(576, 1536), (1536, 576), (576, 192), (64, 37), (40, 1)])
def test_int8_matmul_matches_float64(K, N):
    rng = rng_for("int8", K, N)
    wq = rng.integers(-128, 128, (K, N), dtype=np.int8)
    scale = rng.uniform(1e-3, 1e-2, N).astype(np.float32)
    ws = pack_kernel(wq)
    assert ws.dtype == np.int8 and ws.shape == (-(-N // 16), K, 16)
    for M in ROWS:
        x = rng.standard_normal((M, K)).astype(np.float32)
        got = np.asarray(_int8(N)(jnp.asarray(x), jnp.asarray(ws), jnp.asarray(scale)))
        assert_close(got, reference_int8_matmul(x, ws, scale, n=N))
    x3 = rng.standard_normal((2, 3, K)).astype(np.float32)
    got = np.asarray(_int8(N)(jnp.asarray(x3), jnp.asarray(ws), jnp.asarray(scale)))
    assert_close(got, reference_int8_matmul(x3, ws, scale, n=N))


@pytest.mark.parametrize(
    "x_shape, x_dtype, w_shape, w_dtype, ggml_type, message",
    [
        ((2, 64), jnp.float32, (3, 68), jnp.uint8, "q5_0", "ggml_type 'q5_0' is not one of"),
        ((2, 64), jnp.bfloat16, (3, 68), jnp.uint8, "q8_0", "x must be float32"),
        ((2, 64), jnp.float32, (3, 68), jnp.int8, "q8_0", "w_blocks uint8"),
        ((2, 64), jnp.float32, (3, 2, 34), jnp.uint8, "q8_0", "a stacked weight needs `layer`"),
        ((2, 64), jnp.float32, (3, 2, 1, 34), jnp.uint8, "q8_0", r"w_blocks \[N, row_bytes\]"),
        ((2, 48), jnp.float32, (3, 51), jnp.uint8, "q8_0", "K=48 is not a multiple of the q8_0"),
        ((2, 288), jnp.float32, (3, 162), jnp.uint8, "q4_k", "K=288 is not a multiple of the"),
        ((2, 64), jnp.float32, (3, 60), jnp.uint8, "q8_0", r"K / 32 \* 34 = 68 bytes .*K=64"),
        ((2, 512), jnp.float32, (3, 420), jnp.uint8, "q4_k", r"K / 256 \* 144 = 288 bytes"),
    ],
)
def test_gguf_matmul_bad_input(x_shape, x_dtype, w_shape, w_dtype, ggml_type, message):
    with pytest.raises(ValueError, match=message):
        gguf_matmul(jnp.zeros(x_shape, x_dtype), jnp.zeros(w_shape, w_dtype), ggml_type=ggml_type)


@pytest.mark.parametrize(
    "x_shape, w_shape, w_dtype, scale_shape, n, message",
    [
        ((2, 8), (1, 8, 16), jnp.uint8, (16,), 16, "w_strips int8"),
        ((2, 8), (1, 8, 8), jnp.int8, (8,), 8, r"w_strips must be \[S, K, 16\] or \[L, S, K, 16\]"),
        ((2, 9), (1, 8, 16), jnp.int8, (16,), 16, r"x must be \[..., 8\]"),
        ((2, 8), (2, 8, 16), jnp.int8, (16,), 16, "n=16 does not fit 2 strips"),
        ((2, 8), (1, 8, 16), jnp.int8, (16,), 15, r"scale must be \[15\]"),
    ],
)
def test_int8_matmul_bad_input(x_shape, w_shape, w_dtype, scale_shape, n, message):
    with pytest.raises(ValueError, match=message):
        int8_matmul(jnp.zeros(x_shape), jnp.zeros(w_shape, w_dtype), jnp.zeros(scale_shape), n=n)


def test_kernels_check_what_they_are_given():
    """The FFI handlers' own checks, reached past the Python wrappers."""
    from cpu_ext.registry import ensure_registered

    ensure_registered()

    def gguf(x_shape, w_shape, ggml_type):
        out = jax.ShapeDtypeStruct((x_shape[0], w_shape[0]), jnp.float32)
        call = jax.ffi.ffi_call("jaxllm_gguf_matmul", out)
        x, w = jnp.zeros(x_shape), jnp.zeros(w_shape, jnp.uint8)
        layer = jnp.int32(0)
        return call(x, w, layer, ggml_type=np.int32(ggml_type)).block_until_ready()

    with pytest.raises(Exception, match=r"ggml_type 5 is not one of Q4_0 \(2\)"):
        gguf((2, 64), (3, 68), 5)
    with pytest.raises(Exception, match="K=288 is not a multiple of 256"):
        gguf((2, 288), (3, 162), 12)
    with pytest.raises(Exception, match=r"w rows must be K / 32 \* 34 = 68 bytes for K=64, got 60"):
        gguf((2, 64), (3, 60), 8)
    call = jax.ffi.ffi_call("jaxllm_int8_matmul", jax.ShapeDtypeStruct((2, 20), jnp.float32))
    with pytest.raises(Exception, match=r"scale must be \[N\] with N=20, got \(16,\)"):
        w = jnp.zeros((2, 8, 16), jnp.int8)
        call(jnp.zeros((2, 8)), w, jnp.zeros(16), jnp.int32(0)).block_until_ready()


@pytest.mark.parametrize("ggml_type", ["q4_1", "q6_k"])
def test_stacked_weights_read_in_place_at_the_layer(ggml_type):
    """A stack [L, ...] at a traced layer index gives that layer's product (what a layer scan
    passes), for the GGUF blocks and the int8 strips; a layer outside the stack is an error."""
    rng = rng_for("stacked", ggml_type)
    K, N, L = 512, 48, 3
    stack = np.stack([gguf_blocks(rng, ggml_type, N, K) for _ in range(L)])
    x = jnp.asarray(rng.standard_normal((2, K)), jnp.float32)
    at = jax.jit(lambda x, w, i: gguf_matmul(x, w, ggml_type=ggml_type, layer=i))
    for i in range(L):
        assert_close(at(x, stack, i), reference_gguf_matmul(x, stack[i], ggml_type=ggml_type))
    wq = rng.integers(-127, 128, (L, K, N)).astype(np.int8)
    scale = rng.random((L, N)).astype(np.float32)
    strips = np.stack([pack_kernel(w) for w in wq])
    at8 = jax.jit(lambda x, w, s, i: int8_matmul(x, w, s, n=N, layer=i))
    for i in range(L):
        want = reference_int8_matmul(x, strips[i], scale[i], n=N)
        assert_close(at8(x, strips, scale[i], i), want)
    with pytest.raises(Exception, match=r"layer 3 outside \[0, 3\)"):
        at(x, stack, 3).block_until_ready()
