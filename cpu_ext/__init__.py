"""CPU kernels as XLA FFI custom calls, compiled from `csrc/` with the system C++ compiler.

- `packed_matmul.packed_matmul(x, w_packed, n=N)`: float32 `x @ W` with W packed once into
  16-column strips (`packed_matmul.pack_kernel`); AVX2 + FMA, spread over XLA's intra-op threads.
  The engine packs its dense kernels this way on the CPU (`jaxllm.models.step.step_params`).
- `grouped_matmul.grouped_matmul(x, w_packed, group_sizes, n=N)`: float32 mixture-of-experts
  matmul, x's rows sorted by group and each group's rows times its own packed W_g
  (`grouped_matmul.pack_grouped`); groups without rows are never read.
- `quant_matmul.int8_matmul(x, w_strips, scale, n=N)` / `quant_matmul.gguf_matmul(x, w_blocks,
  ggml_type=...)`: float32 x against int8 strips or a GGUF tensor's blocks (Q8_0, Q4_0, Q4_1,
  Q4_K, Q6_K), dequantized in registers (`jaxllm.quantization` runs them on the CPU).
- `attention.paged_attention(q, k_pages, v_pages, block_tables, kv_lens, query_start_loc, layer,
  *, sm_scale, sliding_window)`: float32 ragged paged attention (the contract of
  `pallas_kernels.reference`); `attention.ragged_paged_attention_cpu_ext` is the `cpu` backend.
- `build.build_library()` / `python -m cpu_ext.build`: compile `csrc/` into a cached shared
  library (the first call builds, ~3 s).
- `registry.ensure_registered()`: load it and register the FFI targets for the CPU;
  `registry.missing_requirements()` names what a machine lacks (x86-64 with AVX2/FMA/F16C, a
  C++ compiler).

Submodules load lazily, so `python -m cpu_ext.build` does not import the rest first.
"""

__all__ = ["pack_kernel", "packed_matmul"]


def __getattr__(name):
    if name in ("pack_kernel", "packed_matmul"):
        from . import packed_matmul as module

        return getattr(module, name)
    raise AttributeError(f"module 'cpu_ext' has no attribute {name!r}")
