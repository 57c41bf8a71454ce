"""Pallas kernels for jaxllm (paged attention first). Imports only JAX, never jaxllm.

`ragged_paged_attention` runs the Triton-lowered Pallas kernels (NVIDIA GPUs; `interpret=True`
anywhere); `ragged_paged_attention_reference` is the pure-jnp oracle with the same interface;
`ragged_paged_attention_cpu` is the same computation laid out for XLA:CPU (the `cpu` backend);
`ragged_inputs` holds the input checks and the query-tile list all backends share.
"""

from . import ragged_inputs, tuned_block_sizes
from .cpu_paged_attention import ragged_paged_attention_cpu
from .ragged_paged_attention import (
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    ragged_paged_attention,
    resolve_decode_only,
    validate_inputs,
)
from .reference import ragged_paged_attention_reference, write_kv_pages

__all__ = [
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "ragged_paged_attention",
    "ragged_paged_attention_cpu",
    "ragged_paged_attention_reference",
    "ragged_inputs",
    "resolve_decode_only",
    "tuned_block_sizes",
    "validate_inputs",
    "write_kv_pages",
]
