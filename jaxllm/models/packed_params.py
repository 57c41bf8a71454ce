"""The CPU parameter layout of `cpu_ext`'s packed matmul: every dense kernel in 16-column strips.

`pack_dense_kernels(params)` re-lays each `kernel` leaf [in, out] as `cpu_ext.packed_matmul.
pack_kernel` strips [S, in, 16] (S = ceil(out / 16)), which `jaxllm.layers.linear.Linear` runs
through the packed matmul:
- per-layer params (`layers_0/...`) and the top-level `lm_head`: packed in place;
- stacked params (`layers/...` [L, in, out]): the kernels move out of `layers` into
  `packed_layers/<module path>` [L, S, in, 16] (e.g. `packed_layers/mlp/up_proj`), which the layer
  scan broadcasts whole; each layer's matmul reads its own kernel in place through the layer index
  (a scanned kernel would be copied out of the stack on every step: SmolLM2-135M, batch-16 decode
  step on 2 cores 65 -> 53 ms, bench/RESULTS.md).
A mixture-of-experts layer's `experts/{gate,up,down}_proj` [E, in, out] become strips [E, S, in, 16]
for cpu_ext's grouped matmul (jaxllm/layers/moe.py), in place in either layout ([L, E, S, in, 16]
in the stacked `layers`, which the scan slices per layer).
A model with tied word embeddings (no `lm_head`) gets a packed `lm_head/kernel` made from the
embedding table, which stays for the token lookup: the LM head then costs one more copy of the
table (SmolLM2-135M: 113 MB) and runs ~3x faster than XLA:CPU's dot at 16 rows (cpu_ext/README.md).
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp

# "ext": cpu_ext's C++ kernels (packed matmul, decode attention); "xla": XLA's own ops only; unset:
# the kernels wherever cpu_ext can run (x86-64 with AVX2/FMA/F16C and a C++ compiler).
CPU_KERNELS_ENV = "JAXLLM_CPU_KERNELS"
logger = logging.getLogger(__name__)


def cpu_kernels_from_env() -> str:
    """`JAXLLM_CPU_KERNELS`: "ext", "xla", or "" (unset)."""
    value = os.environ.get(CPU_KERNELS_ENV, "").strip().lower()
    if value not in ("", "ext", "xla"):
        raise ValueError(
            f"{CPU_KERNELS_ENV}={value!r}: use 'ext' (cpu_ext's C++ kernels) or 'xla' (XLA's ops)"
        )
    return value


def use_cpu_ext() -> bool:
    """Run cpu_ext's kernels on the CPU? `JAXLLM_CPU_KERNELS` decides; unset: where they can run.

    "Can run" means the machine has what they need and the library builds and loads (built on the
    first call of a process, ~3 s, then cached on disk). Unset, a failed build logs a warning and
    XLA's ops are used; with "ext", a machine that lacks something or a failed build raises
    ValueError naming it."""
    choice = cpu_kernels_from_env()
    if choice == "xla":
        return False
    from cpu_ext import registry

    missing = registry.missing_requirements()
    if choice == "ext" and missing:
        raise ValueError(f"{CPU_KERNELS_ENV}=ext: cpu_ext cannot run here: {'; '.join(missing)}")
    if missing:
        return False
    try:
        registry.ensure_registered()
    except RuntimeError as e:
        if choice == "ext":
            raise ValueError(f"{CPU_KERNELS_ENV}=ext: {e}") from e
        if not _warned:
            _warned.append(True)
            logger.warning("cpu_ext is not used (XLA's ops are): %s", e)
        return False
    return True


_warned: list[bool] = []  # the failed-build warning is logged once a process


def use_packed_matmul(params: dict) -> bool:
    """Pack this model's kernels on the CPU? When `use_cpu_ext()` and every kernel is float32."""
    return use_cpu_ext() and all(
        leaf.dtype == jnp.float32
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if _is_kernel(path)
    )


PACKED_LAYERS = "packed_layers"  # stacked packed kernels, by module path within a layer


def is_packed(params: dict) -> bool:
    """In this layout? (`packed_layers`, or a 3-D kernel (float or int8 strips) outside the
    stacked `layers`.)"""
    return PACKED_LAYERS in params or any(
        getattr(path[-1], "key", None) in ("kernel", "kernel_int8") and leaf.ndim == 3
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            {k: v for k, v in params.items() if k != "layers"}
        )
    )


def pack_dense_kernels(params: dict) -> dict:
    """`params` in the packed layout above (a new dict; the unpacked kernels are not kept).

    Quantized weights (jaxllm.quantization.formats) take their format's `cpu_layout` (int8 in
    strips; GGUF blocks as they are); stacked ones that cpu_ext multiplies move to
    `packed_layers/<module path>` as a dict of the format's leaves, read in place at the layer
    index like the float kernels (fp8 stays in `layers`: XLA's ops run it)."""
    from cpu_ext.packed_matmul import pack_kernel
    from jaxllm.layers.moe_params import EXPERTS
    from jaxllm.quantization.formats import format_in

    pack = jax.jit(pack_kernel)
    pack_stacked = jax.jit(jax.vmap(pack_kernel))
    pack_experts = jax.jit(jax.vmap(pack_kernel))  # [E, K, N] -> [E, S, K, 16]
    pack_stacked_experts = jax.jit(jax.vmap(jax.vmap(pack_kernel)))

    def relay(tree: dict) -> dict:  # per-module: float kernels packed, quantized ones re-laid
        out = {}
        for key, value in tree.items():
            if key == EXPERTS:  # a MoE layer's experts: strips for cpu_ext's grouped matmul
                out[key] = {name: pack_experts(w) for name, w in value.items()}
            elif isinstance(value, dict):
                fmt = format_in(value)
                out[key] = fmt.cpu_layout(value) if fmt is not None else relay(value)
            else:
                out[key] = pack(value) if key == "kernel" else value
        return out

    out = relay({k: v for k, v in params.items() if k != "layers"})
    if "layers" in params:  # stacked: kernels -> packed_layers/<module path>, the rest stays
        rest: dict = {}
        packed: dict = {}

        def split(tree: dict, keys: list) -> None:
            for key, value in tree.items():
                fmt = format_in(value) if isinstance(value, dict) else None
                if key == EXPERTS:  # stay in `layers` (scanned): [L, E, S, K, 16]
                    packed_experts = {n: pack_stacked_experts(w) for n, w in value.items()}
                    _insert(rest, keys + [key], packed_experts)
                elif fmt is not None and fmt.cpu_kernel:
                    _insert(packed, keys + [key], fmt.cpu_layout(value))
                elif fmt is not None:  # XLA's ops on the scanned slice (fp8)
                    _insert(rest, keys + [key], value)
                elif isinstance(value, dict):
                    split(value, keys + [key])
                elif key == "kernel":
                    _insert(packed, keys, pack_stacked(value))
                else:
                    _insert(rest, keys + [key], value)

        split(params["layers"], [])
        fuse_projections(packed, rest)
        out["layers"] = rest
        out[PACKED_LAYERS] = packed
    embedding = out.get("embed_tokens", {}).get("embedding")
    if "lm_head" not in out and embedding is not None:
        out["lm_head"] = {"kernel": pack(embedding.T)}  # [V, D] -> strips of [D, V]
    return out


# module -> (fused name, the projections it joins, in output order): one matmul call instead of
# three (two), which matters where each call is a small memory-bound kernel (batch-1 decode)
FUSED_PROJECTIONS = {
    "self_attn": ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
    "mlp": ("gate_up_proj", ("gate_proj", "up_proj")),
}


def fuse_projections(packed: dict, rest: dict) -> None:
    """Join, in place, the stacked quantized projections of `packed` (packed_layers) that read the
    same input into one weight of their outputs side by side (FUSED_PROJECTIONS), where they share
    a format that cpu_ext multiplies: GGUF blocks of one type (rows [L, N, row_bytes] joined), or
    int8 strips whose widths are whole strips. Projections with a bias (in `rest`) stay apart."""
    from jaxllm.quantization.formats import format_in

    for module, (fused, names) in FUSED_PROJECTIONS.items():
        parts = [packed.get(module, {}).get(n) for n in names]
        if any(not isinstance(p, dict) for p in parts):
            continue
        fmts = {format_in(p) for p in parts}
        if len(fmts) != 1 or None in fmts:
            continue
        if any("bias" in rest.get(module, {}).get(n, {}) for n in names):
            continue
        (fmt,) = fmts
        data = fmt.data_leaf()
        if fmt.name == "int8":
            if any(p["kernel_scale"].shape[-1] % 16 for p in parts):
                continue
            joined = {
                data: jnp.concatenate([p[data] for p in parts], axis=-3),  # strips [L, S, K, 16]
                "kernel_scale": jnp.concatenate([p["kernel_scale"] for p in parts], axis=-1),
            }
        elif fmt.cpu_kernel:  # GGUF rows [L, N, row_bytes]
            joined = {data: jnp.concatenate([p[data] for p in parts], axis=-2)}
        else:
            continue
        for n in names:
            del packed[module][n]
        packed[module][fused] = joined


def _insert(tree: dict, keys: list, leaf) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = leaf


def _is_kernel(path) -> bool:
    return bool(path) and getattr(path[-1], "key", None) == "kernel"
