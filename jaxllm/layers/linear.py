"""`Linear`: a dense layer whose kernel is either [in, out] (XLA's dot) or packed for the CPU.

Parameters are those of `flax.linen.Dense` (`kernel` [in, out], `bias` [out] when `use_bias`), so
every loader and checkpoint works unchanged. The engine re-lays the kernels on the CPU into
16-column strips [ceil(out / 16), in, 16] (`cpu_ext.packed_matmul.pack_kernel`, applied by
`jaxllm.models.step.step_params`, layout in `jaxllm.models.packed_params`); a 3-D kernel, or a
stacked packed kernel passed in with its layer index, then runs the packed AVX2 matmul of `cpu_ext`
instead of XLA's dot (SmolLM2-135M's layer shapes at 16 rows: 1.2-1.7x XLA:CPU's Eigen dot, the
tied LM head 3.2x; cpu_ext/README.md).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Linear(nn.Module):
    features: int
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,  # [..., in]
        packed: jax.Array | None = None,  # stacked packed kernels [L, S, in, 16] of a layer scan
        layer: jax.Array | int | None = None,  # which of them
    ) -> jax.Array:  # [..., features]
        stored = self.get_variable("params", "kernel")
        if packed is not None or (stored is not None and stored.ndim == 3):
            from cpu_ext.packed_matmul import packed_matmul
        if packed is not None:  # read in place at `layer` (no kernel param of its own)
            y = packed_matmul(x.astype(packed.dtype), packed, n=self.features, layer=layer)
        elif stored is not None and stored.ndim == 3:  # packed strips [S, in, 16] (f32, CPU)
            y = packed_matmul(x.astype(stored.dtype), stored, n=self.features)
        else:  # Flax checks the [in, out] shape here
            kernel = self.param(
                "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), self.dtype
            )
            y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.dtype)
            y = y + bias.astype(y.dtype)
        return y.astype(self.dtype)
