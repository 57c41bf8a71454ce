"""`Linear`: a dense layer whose kernel is float [in, out] (XLA's dot), packed for the CPU, or
stored quantized.

Parameters are those of `flax.linen.Dense` (`kernel` [in, out], `bias` [out] when `use_bias`), so
every loader and checkpoint works unchanged. The engine re-lays the kernels on the CPU into
16-column strips [ceil(out / 16), in, 16] (`cpu_ext.packed_matmul.pack_kernel`, applied by
`jaxllm.models.step.step_params`, layout in `jaxllm.models.packed_params`); a 3-D kernel, or a
stacked packed kernel passed in with its layer index, then runs the packed AVX2 matmul of `cpu_ext`
instead of XLA's dot (SmolLM2-135M's layer shapes at 16 rows: 1.2-1.7x XLA:CPU's Eigen dot, the
tied LM head 3.2x; cpu_ext/README.md).

A quantized model holds a storage format's leaves in place of `kernel` (`kernel_int8` +
`kernel_scale`, `kernel_fp8` + `kernel_scale`, or GGUF blocks `kernel_q4_1`, ...:
jaxllm.quantization.formats), and the format's matmul runs: on the CPU through cpu_ext's kernels
where the leaves are laid out for them (`step_params`), elsewhere through XLA's ops.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.quantization.formats import Gguf, format_in


def use_cpu_kernels() -> bool:
    """Does this trace run on the CPU with cpu_ext's kernels on (`JAXLLM_CPU_KERNELS`)?"""
    if jax.default_backend() != "cpu":
        return False
    from jaxllm.models.packed_params import use_cpu_ext

    return use_cpu_ext()


class Linear(nn.Module):
    features: int
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [..., in]
        packed: Any = None,  # stacked packed kernels [L, S, in, 16] (or quantized leaves [L, ..])
        layer: jax.Array | int | None = None,  # which of them
    ) -> jax.Array:  # [..., features]
        own = self.variables.get("params", {})
        quantized = packed if isinstance(packed, dict) else own
        fmt = format_in(quantized)
        if fmt is not None:
            data = quantized[fmt.data_leaf()]
            stacked = isinstance(packed, dict)  # read in place at `layer` by cpu_ext
            if isinstance(fmt, Gguf):
                cpu_ext = stacked or use_cpu_kernels()
            else:  # int8 re-laid into strips for cpu_ext: [S, in, 16] or stacked [L, S, in, 16]
                cpu_ext = stacked or (fmt.name == "int8" and data.ndim == 3)
            y = fmt.matmul(x, quantized, self.features, cpu_ext, layer if stacked else None)
        else:
            stored = self.get_variable("params", "kernel")
            if packed is not None or (stored is not None and stored.ndim == 3):
                from cpu_ext.packed_matmul import packed_matmul
            if packed is not None:  # read in place at `layer` (no kernel param of its own)
                y = packed_matmul(x.astype(packed.dtype), packed, n=self.features, layer=layer)
            elif stored is not None and stored.ndim == 3:  # packed strips [S, in, 16] (f32, CPU)
                y = packed_matmul(x.astype(stored.dtype), stored, n=self.features)
            else:  # Flax checks the [in, out] shape here
                kernel = self.param(
                    "kernel",
                    nn.initializers.lecun_normal(),
                    (x.shape[-1], self.features),
                    self.dtype,
                )
                y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.dtype)
            y = y + bias.astype(y.dtype)
        return y.astype(self.dtype)
