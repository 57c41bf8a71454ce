"""CUDA paged-attention kernels as XLA FFI custom calls: jaxllm's `cuda` attention backend.

- `attention.ragged_paged_attention_cuda(q, k_pages, v_pages, block_tables, kv_lens,
  query_start_loc, layer, *, sm_scale, sliding_window, decode_only)`: the ragged interface of
  `pallas_kernels.reference` (read its docstring), on NVIDIA GPUs.
- `build.build_library()` / `python -m cuda_ext.build`: compile `csrc/` with nvcc into a cached
  shared library (first use builds lazily).
- `registry.ensure_registered()`: load it and register the FFI targets for platform CUDA; raises
  RuntimeError naming what is missing (CUDA GPU, nvcc).

Submodules load lazily, so `python -m cuda_ext.build` does not import JAX's attention path first.
"""

__all__ = ["build_library", "ragged_paged_attention_cuda"]


def __getattr__(name):
    if name == "ragged_paged_attention_cuda":
        from .attention import ragged_paged_attention_cuda

        return ragged_paged_attention_cuda
    if name == "build_library":
        from .build import build_library

        return build_library
    raise AttributeError(f"module 'cuda_ext' has no attribute {name!r}")
