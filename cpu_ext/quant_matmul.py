"""Matmuls over quantized weights on XLA:CPU: the FFI kernels of csrc/quant_matmul.cc.

    w_strips = pack_kernel(wq)                        # int8 [K, N] -> [ceil(N / 16), K, 16], once
    y = int8_matmul(x, w_strips, scale, n=N)          # (x @ wq) * scale, scale [N] float32
    y = gguf_matmul(x, w_blocks, ggml_type="q4_1")    # w_blocks uint8 [N, K / 32 * 20]: y = x @ W.T
    y = gguf_matmul(x, stack, ggml_type="q4_1", layer=i)  # stack [L, N, ...]: layer i in place

`w_blocks` is a GGUF tensor's bytes as the file stores them (numpy order [N, K], each row K /
block_elems blocks of `GGUF_BLOCKS[ggml_type]`); the kernel dequantizes bit for bit as
`gguf.quants.dequantize` does, in registers for up to 4 rows of x, into float strips for more.
x is float32 [..., K] with any leading dims, inside any jit. A stacked weight (int8 strips [L, S,
K, 16], GGUF blocks [L, N, row_bytes]) is read in place at `layer` (traced or not), as
`packed_matmul` reads its stacks: a layer scan never copies a layer's weights out of the stack.
`reference_int8_matmul` and `reference_gguf_matmul` are the tests' oracles (numpy, float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .packed_matmul import check_strips, unpack_kernel

# ggml_type -> (values a block, bytes a block), as GGML defines them.
GGUF_BLOCKS = {
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "q4_k": (256, 144),
    "q6_k": (256, 210),
}
# ggml_type -> GGML's enum value (gguf.GGMLQuantizationType), the kernel's `ggml_type` attribute.
GGML_TYPE_IDS = {"q4_0": 2, "q4_1": 3, "q8_0": 8, "q4_k": 12, "q6_k": 14}


def _call(target: str, x: jax.Array, k: int, n: int, *args, layer=None, **attrs) -> jax.Array:
    from .registry import ensure_registered

    ensure_registered()
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((x2.shape[0], n), jnp.float32))
    li = jnp.asarray(0 if layer is None else layer, jnp.int32)
    return call(x2, *args, li, **attrs).reshape(*lead, n)


def _check_stacked(name: str, w: jax.Array, ndim: int, layer) -> None:
    if (w.ndim == ndim + 1) == (layer is None):
        raise ValueError(f"{name}: a stacked weight needs `layer`, and only it takes one")


def int8_matmul(
    x: jax.Array,  # [..., K] float32
    w_strips: jax.Array,  # [S, K, 16] int8: pack_kernel(wq) of wq [K, n]; or stacked [L, S, K, 16]
    scale: jax.Array,  # [n] float32, per output column (of `layer` for a stacked w_strips)
    *,
    n: int,
    layer: jax.Array | int | None = None,
) -> jax.Array:  # [..., n] float32
    """(x @ wq) * scale, wq [K, n] int8 given as `pack_kernel(wq)`."""
    if x.dtype != jnp.float32 or w_strips.dtype != jnp.int8 or scale.dtype != jnp.float32:
        raise ValueError(
            "int8_matmul: x and scale must be float32 and w_strips int8, got "
            f"x {x.dtype}, w_strips {w_strips.dtype}, scale {scale.dtype}"
        )
    k = check_strips("int8_matmul", "w_strips", x, w_strips, n, layer)
    if scale.shape != (n,):
        raise ValueError(f"int8_matmul: scale must be [{n}], got {scale.shape}")
    return _call("jaxllm_int8_matmul", x, k, n, w_strips, scale, layer=layer)


def gguf_matmul(
    x: jax.Array,  # [..., K] float32
    w_blocks: jax.Array,  # [N, K / block_elems * block_bytes] uint8, or stacked [L, N, ...]
    *,
    ggml_type: str,  # a key of GGUF_BLOCKS
    layer: jax.Array | int | None = None,
) -> jax.Array:  # [..., N] float32
    """x @ W.T with W [N, K] the dequantized GGUF tensor whose block bytes are `w_blocks`."""
    _check_stacked("gguf_matmul", w_blocks, 2, layer)
    if ggml_type not in GGUF_BLOCKS:
        raise ValueError(
            f"gguf_matmul: ggml_type {ggml_type!r} is not one of {', '.join(GGUF_BLOCKS)}"
        )
    if x.dtype != jnp.float32 or w_blocks.dtype != jnp.uint8:
        raise ValueError(
            "gguf_matmul: x must be float32 and w_blocks uint8, got "
            f"x {x.dtype}, w_blocks {w_blocks.dtype}"
        )
    if x.ndim < 1 or w_blocks.ndim not in (2, 3):
        raise ValueError(
            f"gguf_matmul: x must be [..., K] and w_blocks [N, row_bytes], got {x.shape} and "
            f"{w_blocks.shape}"
        )
    elems, nbytes = GGUF_BLOCKS[ggml_type]
    k = x.shape[-1]
    if k % elems:
        raise ValueError(f"gguf_matmul: K={k} is not a multiple of the {ggml_type} block {elems}")
    if w_blocks.shape[-1] != k // elems * nbytes:
        raise ValueError(
            f"gguf_matmul: w_blocks rows must be K / {elems} * {nbytes} = {k // elems * nbytes} "
            f"bytes of {ggml_type} for K={k}, got {w_blocks.shape}"
        )
    n = w_blocks.shape[-2]
    kind = np.int32(GGML_TYPE_IDS[ggml_type])
    return _call("jaxllm_gguf_matmul", x, k, n, w_blocks, layer=layer, ggml_type=kind)


def reference_int8_matmul(x, w_strips, scale, *, n: int) -> np.ndarray:
    """(x @ wq) * scale in float64 numpy: the tests' oracle."""
    wq = unpack_kernel(np.asarray(w_strips), n).astype(np.float64)
    return (np.asarray(x, np.float64) @ wq) * np.asarray(scale, np.float64)


def dequantize_gguf(w_blocks, ggml_type: str) -> np.ndarray:  # [N, K] float32
    """W from its GGUF block bytes by gguf-py's numpy dequantizer (the kernel's W, bit for bit)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return dequantize(np.asarray(w_blocks), GGMLQuantizationType[ggml_type.upper()])


def reference_gguf_matmul(x, w_blocks, *, ggml_type: str) -> np.ndarray:
    """x @ W.T in float64 numpy, W by `dequantize_gguf`: the tests' oracle."""
    w = dequantize_gguf(w_blocks, ggml_type).astype(np.float64)
    return np.asarray(x, np.float64) @ w.T
