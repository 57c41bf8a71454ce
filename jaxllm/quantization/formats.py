"""Storage formats of quantized weights: how a float leaf is stored, loaded and multiplied.

A linear kernel [in, out] (the layout's `.../kernel`) stored in a format becomes the format's
leaves beside each other in the same module (any leading stacked-layer axes kept):
- `int8`: `kernel_int8` int8 [in, out] and `kernel_scale` float32 [out] (per output channel);
  the matmul is weight-only (W8A16): x @ q * scale;
- `fp8`: `kernel_fp8` float8_e4m3fn [in, out] and `kernel_scale` float32 [out]; the matmul
  quantizes x per token to e4m3 (dynamic scales) and runs x_q @ q in fp8 where the GPU has fp8
  tensor cores (compute capability 8.9+), else the same products emulated in float32;
- a GGUF block type (`q8_0`, `q4_0`, `q4_1`, `q4_k`, `q6_k`): `kernel_<type>` uint8
  [out, row_bytes], llama.cpp's blocks exactly as the file stores them (gguf_blocks.py).
An embedding table [V, D] in a GGUF type is `embedding_<type>` uint8 [V, row_bytes].

Each format's `matmul` runs inside the jitted step; on the CPU with `cpu_ext` the int8 and GGUF
formats run its kernels (int8 re-laid in 16-column strips [S, in, 16] by `cpu_layout`, GGUF
blocks as they are), which dequantize in registers. Elsewhere XLA's ops (the dequantization fuses
into the dot on the GPU).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.quantization import gguf_blocks

logger = logging.getLogger(__name__)

Leaves = dict[str, Any]  # a format's leaves of one weight, by leaf name
KERNEL, EMBEDDING = "kernel", "embedding"  # the float leaves a format can replace


class WeightFormat:
    """One storage format. Subclasses set `name` and implement the methods."""

    name: str
    cpu_kernel: ClassVar[bool] = False  # does cpu_ext multiply it (read in place from a stack)?

    def data_leaf(self, base: str = KERNEL) -> str:
        """The leaf whose presence marks this format (`kernel_int8`, `embedding_q8_0`, ...)."""
        return f"{base}_{self.name}"

    def leaves(self, k: int, n: int) -> dict[str, tuple[tuple[int, ...], Any]]:
        """leaf name -> (shape, dtype) of a [k, n] kernel."""
        raise NotImplementedError

    def leaf_axes(self, in_axis: str, out_axis: str) -> dict[str, tuple[str, ...]]:
        """leaf name -> logical axes, from the kernel's (in, out) axes."""
        raise NotImplementedError

    def quantize(self, kernel: Any) -> Leaves:
        """[..., k, n] float (numpy or jax) -> leaves (leading axes kept)."""
        raise NotImplementedError

    def dequantize(self, leaves: Leaves) -> jax.Array:
        """leaves -> [..., k, n] float32 (the oracle of `matmul`)."""
        raise NotImplementedError

    def matmul(self, x: jax.Array, leaves: Leaves, n: int, cpu_ext: bool, layer=None):
        """x [..., k] @ the weight -> [..., n] float32. `cpu_ext`: run cpu_ext's kernel on leaves
        in `cpu_layout` (stacked [L, ...] with `layer`, read in place)."""
        raise NotImplementedError

    def cpu_layout(self, leaves: Leaves) -> Leaves:
        """Leaves re-laid for cpu_ext's kernel (unchanged where it reads them as they are)."""
        return leaves

    def check_split(self, k: int, tp: int, what: str) -> None:
        """Raise a ValueError when input width k cannot be split over tp devices."""


class ChannelScaled(WeightFormat):
    """Per-output-channel scaled formats (int8, fp8): q [in, out] and scale [out]."""

    dtype: ClassVar[Any]
    qmax: ClassVar[float]

    def leaves(self, k, n):
        return {
            self.data_leaf(): ((k, n), jnp.dtype(self.dtype)),
            "kernel_scale": ((n,), jnp.float32),
        }

    def leaf_axes(self, in_axis, out_axis):
        return {self.data_leaf(): (in_axis, out_axis), "kernel_scale": (out_axis,)}

    def quantize(self, kernel):
        w = jnp.asarray(kernel, jnp.float32)
        amax = jnp.max(jnp.abs(w), axis=-2)  # [..., n]
        scale = jnp.where(amax > 0, amax / self.qmax, 1.0)
        return {self.data_leaf(): self._cast(w / scale[..., None, :]), "kernel_scale": scale}

    def _cast(self, w: jax.Array) -> jax.Array:
        raise NotImplementedError

    def dequantize(self, leaves):
        q, scale = leaves[self.data_leaf()], leaves["kernel_scale"]
        return q.astype(jnp.float32) * scale[..., None, :]


class Int8(ChannelScaled):
    name = "int8"
    cpu_kernel = True
    dtype = jnp.int8
    qmax = 127.0

    def _cast(self, w):
        return jnp.clip(jnp.round(w), -127, 127).astype(jnp.int8)

    def matmul(self, x, leaves, n, cpu_ext, layer=None):
        q, scale = leaves[self.data_leaf()], leaves["kernel_scale"]
        if cpu_ext:
            from cpu_ext.quant_matmul import int8_matmul

            if layer is not None:
                scale = scale[layer]
            return int8_matmul(x.astype(jnp.float32), q, scale, n=n, layer=layer)
        y = jnp.dot(x, q.astype(x.dtype), preferred_element_type=jnp.float32)
        return y * scale

    def cpu_layout(self, leaves):
        from cpu_ext.packed_matmul import pack_kernel

        q = leaves[self.data_leaf()]
        pack = pack_kernel
        for _ in range(q.ndim - 2):
            pack = jax.vmap(pack)
        return {**leaves, self.data_leaf(): jax.jit(pack)(q)}


class Fp8(ChannelScaled):
    name = "fp8"
    dtype = jnp.float8_e4m3fn
    qmax = float(jnp.finfo(jnp.float8_e4m3fn).max)  # 448

    def _cast(self, w):
        return jnp.clip(w, -self.qmax, self.qmax).astype(self.dtype)

    def matmul(self, x, leaves, n, cpu_ext, layer=None):
        q, scale = leaves[self.data_leaf()], leaves["kernel_scale"]
        xf = x.astype(jnp.float32)
        amax = jnp.max(jnp.abs(xf), axis=-1, keepdims=True)  # dynamic per-token scales
        x_scale = jnp.where(amax > 0, amax / self.qmax, 1.0)
        xq = self._cast(xf / x_scale)
        if native_fp8_dot():
            y = jnp.dot(xq, q, preferred_element_type=jnp.float32)
        else:  # the same e4m3 products, accumulated in float32
            y = jnp.dot(xq.astype(jnp.float32), q.astype(jnp.float32))
        return y * x_scale * scale


class Gguf(WeightFormat):
    """A GGUF block type; the kernel is stored [out, row_bytes] (the file's own orientation)."""

    cpu_kernel = True

    def __init__(self, ggml_type: str):
        self.name = ggml_type

    @property
    def block(self) -> tuple[int, int]:
        return gguf_blocks.GGUF_BLOCKS[self.name]

    def leaves(self, k, n):
        return {self.data_leaf(): ((n, gguf_blocks.row_bytes(self.name, k)), jnp.uint8)}

    def leaf_axes(self, in_axis, out_axis):
        return {self.data_leaf(): (out_axis, in_axis)}

    def quantize(self, kernel):
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        w = np.swapaxes(np.asarray(kernel, np.float32), -1, -2)  # [..., n, k]
        try:
            blocks = quantize(np.ascontiguousarray(w), GGMLQuantizationType[self.name.upper()])
        except NotImplementedError as e:
            raise ValueError(
                f"quantizing float weights to GGUF {self.name} is not supported (the gguf package "
                "cannot); load a GGUF file that holds them"
            ) from e
        return {self.data_leaf(): blocks}

    def dequantize(self, leaves):
        rows = gguf_blocks.dequantize_rows(jnp.asarray(leaves[self.data_leaf()]), self.name)
        return jnp.swapaxes(rows, -1, -2)

    def matmul(self, x, leaves, n, cpu_ext, layer=None):
        blocks = leaves[self.data_leaf()]
        if cpu_ext:
            from cpu_ext.quant_matmul import gguf_matmul

            return gguf_matmul(x.astype(jnp.float32), blocks, ggml_type=self.name, layer=layer)
        w = gguf_blocks.dequantize_rows(blocks, self.name).astype(x.dtype)  # [n, k]
        return jnp.dot(x, w.T, preferred_element_type=jnp.float32)

    def check_split(self, k, tp, what):
        elems = self.block[0]
        if k % (elems * tp):
            raise ValueError(
                f"{what}: GGUF {self.name} stores rows of {k} in blocks of {elems}; "
                f"{k // elems} blocks do not split evenly over tensor_parallel_size={tp}"
            )


FORMATS: dict[str, WeightFormat] = {
    f.name: f for f in (Int8(), Fp8(), *(Gguf(t) for t in gguf_blocks.GGUF_BLOCKS))
}
GGUF_TYPES = tuple(gguf_blocks.GGUF_BLOCKS)


def get_format(name: str) -> WeightFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown weight format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_in(params: dict | None, base: str = KERNEL) -> WeightFormat | None:
    """The format whose data leaf `params` (one module's params) holds, or None."""
    if not params:
        return None
    for fmt in FORMATS.values():
        if fmt.data_leaf(base) in params:
            return fmt
    return None


_fallback_logged: list[bool] = []


def native_fp8_dot() -> bool:
    """Does this process's default device multiply e4m3 matrices natively (GPU, sm_89+)?

    Off such a device the fp8 matmul emulates the same products in float32, which is logged once.
    """
    dev = jax.devices()[0]
    cc = getattr(dev, "compute_capability", None)
    if dev.platform == "gpu" and cc is not None:
        major, minor = (int(p) for p in str(cc).split(".")[:2])
        if (major, minor) >= (8, 9):
            return True
    if not _fallback_logged:
        _fallback_logged.append(True)
        logger.info(
            "fp8 weights on %s (%s): no fp8 matrix units; the fp8 products run in float32",
            dev.platform,
            getattr(dev, "device_kind", "?"),
        )
    return False
