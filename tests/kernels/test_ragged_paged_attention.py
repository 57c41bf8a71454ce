"""Pallas ragged paged attention vs the pure-jnp reference.

CPU: the kernels run with `interpret=True`. GPU (`-m gpu`): the same sweep, compiled through Triton.

Every batch is drawn fresh and poisoned by `ragged_batches.make_batch` (read its docstring); the
output buffer starts as NaN too, so a row the kernel fails to write stays NaN. The decode path is
covered with one KV split (a single kernel writes the output) and with several (split kernel plus
combine kernel), forced and automatic, with the splits merged by jnp ops that XLA fuses
(`decode_combine="xla"`) and merged inside the split kernel by the last split to finish
(`decode_combine="fused"`, also the automatic plan on small grids of the Llama-3-8B key).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from ragged_batches import GOOD_SHAPES, Case, L, make_batch, reference, rng_for, sds, tolerance

from pallas_kernels import tuned_block_sizes
from pallas_kernels.decode_attention import _combine_kernel, xla_combine
from pallas_kernels.paged_softmax import NEG, TritonParams
from pallas_kernels.ragged_paged_attention import (
    ragged_paged_attention,
    resolve_decode_only,
    validate_inputs,
)

rpa_module = importlib.import_module("pallas_kernels.ragged_paged_attention")

pytestmark = pytest.mark.filterwarnings(
    "ignore:The Pallas Triton backend is deprecated:DeprecationWarning"
)

ON_GPU = jax.devices()[0].platform == "gpu"


@dataclasses.dataclass(frozen=True)
class XcCase(Case):
    """A Case with the decode path's combine chosen (`decode_combine`), and whether interpret mode
    also runs it into a NaN output buffer (compiled runs always do)."""

    combine: str | None = None
    nan_buffer: bool = False
    unmasked_prefix: bool | None = None


# Covering set (every GQA ratio, both head dims, both block sizes, both dtypes, both paths, splits,
# sliding window), kept small because each distinct static config costs one interpret compile.
CPU_CASES = [
    Case("gen-g1-d64-bs16-f32", 1, 64, 16, "float32", False),
    Case("gen-g2-d64-bs32-f32", 2, 64, 32, "float32", False, layer=0),
    Case("gen-g4-d64-bs16-bf16", 4, 64, 16, "bfloat16", False),
    Case("gen-g8-d64-bs32-bf16", 8, 64, 32, "bfloat16", False, Hkv=1),
    Case("gen-g4-d128-bs16-f32", 4, 128, 16, "float32", False),
    Case("gen-g8-d128-bs32-bf16", 8, 128, 32, "bfloat16", False, Hkv=1, P=3),
    Case("gen-g3-d64-bs16-f32", 3, 64, 16, "float32", False),
    Case("gen-g2-d64-bs16-f32-window", 2, 64, 16, "float32", False, window=13),
    Case("gen-g1-d64-bs16-f32-bk16-bq4", 1, 64, 16, "float32", False, ppcb=1, block_q=4),
    Case("dec-g1-d64-bs16-f32-auto1", 1, 64, 16, "float32", True),  # auto: 1 split (4 pages)
    Case("dec-g2-d64-bs32-f32-ns4", 2, 64, 32, "float32", True, splits=4),
    Case("dec-g4-d128-bs16-bf16-ns2", 4, 128, 16, "bfloat16", True, splits=2),
    Case("dec-g8-d64-bs16-bf16", 8, 64, 16, "bfloat16", True, Hkv=1, splits=1, layer=0),
    Case("dec-g4-d64-bs32-f32-ns8", 4, 64, 32, "float32", True, splits=8),
    Case("dec-g4-d64-bs16-f32-window-ns2", 4, 64, 16, "float32", True, splits=2, window=20),
    Case(
        "dec-g3-d64-bs16-f32-bk16-auto2", 3, 64, 16, "float32", True, ppcb=1, P=9
    ),  # auto: 2 splits
]

# The XLA combine (split kernel + jnp merge): G 1, 4, 8; more splits than compute blocks (empty
# splits); a sliding window; a NaN output buffer. Every batch has padding rows and a sequence
# without query rows (ragged_batches.draw_lengths).
XC_CASES = [
    XcCase(
        "dec-xc-g1-d64-bs16-f32-ns4", 1, 64, 16, "float32", True, splits=4, ppcb=1,
        combine="xla", nan_buffer=True,
    ),
    XcCase("dec-xc-g4-d64-bs32-bf16-ns2", 4, 64, 32, "bfloat16", True, splits=2, combine="xla"),
    XcCase(
        "dec-xc-g8-d64-bs16-f32-ns16", 8, 64, 16, "float32", True, Hkv=1, splits=16, ppcb=1,
        combine="xla", layer=0,
    ),
    XcCase(
        "dec-xc-g4-d64-bs16-f32-window-ns4", 4, 64, 16, "float32", True, splits=4, ppcb=1,
        window=20, combine="xla",
    ),
]  # fmt: skip

# The fused combine (one split kernel whose last split per (sequence, KV head) merges): G 1, 4, 8;
# empty splits; a window; a NaN output buffer. The interpreter runs the programs in grid order, so
# there the highest split merges; the GPU runs cover arbitrary arrival orders.
FUSED_CASES = [
    XcCase(
        "dec-fu-g1-d64-bs16-f32-ns4", 1, 64, 16, "float32", True, splits=4, ppcb=1,
        combine="fused", nan_buffer=True,
    ),
    XcCase("dec-fu-g4-d64-bs32-bf16-ns2", 4, 64, 32, "bfloat16", True, splits=2, combine="fused"),
    XcCase(
        "dec-fu-g8-d64-bs16-f32-window-ns16", 8, 64, 16, "float32", True, Hkv=1, splits=16,
        ppcb=1, window=20, combine="fused", layer=0,
    ),
]  # fmt: skip

# The general kernel with its unmasked prefix (blocks before a tile's first row): GQA 1, 3, 8,
# both block sizes, a window (where it is off), more query tokens per tile than a block holds.
PREFIX_CASES = [
    XcCase(
        "gen-up-g1-d64-bs16-f32-bk16-bq16", 1, 64, 16, "float32", False, P=8, ppcb=1, block_q=16,
        unmasked_prefix=True,
    ),
    XcCase(
        "gen-up-g3-d64-bs32-bf16-bk32-bq4", 3, 64, 32, "bfloat16", False, P=4, ppcb=1, block_q=4,
        unmasked_prefix=True,
    ),
    XcCase(
        "gen-up-g8-d128-bs16-f32-window", 8, 128, 16, "float32", False, Hkv=1, P=5, window=19,
        unmasked_prefix=True,
    ),
]  # fmt: skip

# On the GPU compiles are cheap: the CPU set, then longer contexts, auto splits, bigger batches.
GPU_CASES = CPU_CASES + XC_CASES + FUSED_CASES + PREFIX_CASES + [
    Case("gpu-dec-g4-d128-bs16-bf16-long", 4, 128, 16, "bfloat16", True, Hkv=8, S=3, T=8, P=96),
    Case("gpu-dec-g8-d128-bs32-f32-long", 8, 128, 32, "float32", True, S=4, T=8, P=40, splits=8),
    Case("gpu-dec-g1-d64-bs16-bf16-many", 1, 64, 16, "bfloat16", True, Hkv=4, S=64, T=80, P=8),
    Case(
        "gpu-dec-g2-d128-bs16-bf16-window", 2, 128, 16, "bfloat16", True, S=4, T=8, P=64, window=200
    ),
    Case("gpu-gen-g4-d128-bs16-bf16-long", 4, 128, 16, "bfloat16", False, Hkv=8, S=6, T=512, P=48),
    Case("gpu-gen-g8-d128-bs32-f32-long", 8, 128, 32, "float32", False, S=4, T=256, P=20),
    Case(
        "gpu-gen-g1-d64-bs16-bf16-window", 1, 64, 16, "bfloat16", False, S=4, T=256, P=24, window=77
    ),
    Case("gpu-gen-g4-d256-bs16-bf16", 4, 256, 16, "bfloat16", False, Hkv=1, S=4, T=128, P=16),
    Case("gpu-dec-g4-d256-bs16-bf16", 4, 256, 16, "bfloat16", True, Hkv=1, S=4, T=8, P=32),
    # Llama-3-8B key, one split given on a grid of 8 programs -> the single-pass knobs (8, 1)
    Case(
        "gpu-dec-g4-d128-bs16-bf16-single-pass", 4, 128, 16, "bfloat16", True, S=4, T=8, P=32,
        splits=1,
    ),
    # Llama-3-8B key, automatic: the fused small-grid plans (8 splits of 4 pages; 16 of 8)
    Case("gpu-dec-g4-d128-bs16-bf16-auto-fused", 4, 128, 16, "bfloat16", True, S=4, T=8, P=32),
    Case("gpu-dec-g4-d128-bs16-bf16-auto-fused2", 4, 128, 16, "bfloat16", True, S=1, T=4, P=128),
    # The XLA combine at the Llama-3-8B shape: JAX's op's layouts (16 splits of one compute block,
    # contexts 512 and 2048), a batch of 16 and a window.
    XcCase(
        "gpu-dec-xc-g4-d128-bs16-bf16-ns16-p2", 4, 128, 16, "bfloat16", True, Hkv=8, S=2, T=4,
        P=32, splits=16, ppcb=2, combine="xla",
    ),
    XcCase(
        "gpu-dec-xc-g4-d128-bs16-bf16-ns16-p8", 4, 128, 16, "bfloat16", True, Hkv=8, S=2, T=4,
        P=128, splits=16, ppcb=8, combine="xla",
    ),
    XcCase(
        "gpu-dec-xc-g4-d128-bs16-bf16-s16-ns4", 4, 128, 16, "bfloat16", True, Hkv=8, S=16, T=24,
        P=128, splits=4, combine="xla",
    ),
    XcCase(
        "gpu-dec-xc-g8-d128-bs16-f32-window-ns8", 8, 128, 16, "float32", True, S=4, T=8, P=64,
        splits=8, window=200, combine="xla",
    ),
    # The fused combine at the Llama-3-8B shape (1 x 512 and 1 x 2048 layouts; 16 sequences; 32
    # splits), and with f32 and a window.
    XcCase(
        "gpu-dec-fu-g4-d128-bs16-bf16-ns16-p2", 4, 128, 16, "bfloat16", True, Hkv=8, S=2, T=4,
        P=32, splits=16, ppcb=2, combine="fused",
    ),
    XcCase(
        "gpu-dec-fu-g4-d128-bs16-bf16-ns16-p8", 4, 128, 16, "bfloat16", True, Hkv=8, S=2, T=4,
        P=128, splits=16, ppcb=8, combine="fused",
    ),
    XcCase(
        "gpu-dec-fu-g4-d128-bs16-bf16-s16-ns32", 4, 128, 16, "bfloat16", True, Hkv=8, S=16, T=24,
        P=128, splits=32, ppcb=1, combine="fused",
    ),
    XcCase(
        "gpu-dec-fu-g8-d128-bs16-f32-window-ns8", 8, 128, 16, "float32", True, S=4, T=8, P=64,
        splits=8, window=200, combine="fused",
    ),
]  # fmt: skip


def _kernel_kwargs(case: Case, interpret: bool) -> dict:
    return dict(
        sliding_window=case.window,
        decode_only=case.decode,
        num_kv_splits=case.splits,
        pages_per_compute_block=case.ppcb,
        block_q=case.block_q,
        interpret=interpret,
        decode_combine=getattr(case, "combine", None),
        unmasked_prefix=getattr(case, "unmasked_prefix", None),
    )


def check_case(case: Case, interpret: bool, num_batches: int) -> None:
    for seed in range(num_batches):
        kernel_args, ref_args, n_valid = make_batch(case, seed)
        T, Hq, D = kernel_args[0].shape
        expected = reference(*ref_args, case.layer, sliding_window=case.window)
        nan_out = jnp.full((T, Hq, D), jnp.nan, kernel_args[0].dtype)
        # General path: into a NaN buffer (rows it must not write keep the NaN). Decode path: the
        # public call, whose kernels write every row (the interpreter starts outputs as NaN, so a
        # skipped row shows); compiled, also into a NaN buffer, since device memory starts stale.
        poison = not interpret or getattr(case, "nan_buffer", False)
        buffers = [nan_out] if not case.decode else ([None, nan_out] if poison else [None])
        for out_init in buffers:
            got = ragged_paged_attention(
                *kernel_args, case.layer, _out_init=out_init, **_kernel_kwargs(case, interpret)
            )
            got = np.asarray(got.astype(jnp.float32))
            msg = f"{case.name} batch {seed} ({'own buffer' if out_init is None else 'NaN buffer'})"
            assert got.dtype == np.float32 and got.shape == (T, Hq, D)
            np.testing.assert_allclose(
                got[:n_valid], expected[:n_valid], err_msg=msg, **tolerance(case.dtype)
            )
            if case.decode:  # zeros where no sequence owns the row
                np.testing.assert_array_equal(got[n_valid:], 0.0, err_msg=msg)
            else:  # never written: the buffer's NaN stays
                assert np.isnan(got[n_valid:]).all(), f"{msg}: a padding row was written"


# --------------------------------------------------------------------------------------------------
# CPU (interpret mode).
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.id)
def test_matches_reference_interpret(case):
    check_case(case, interpret=True, num_batches=3)


@pytest.mark.parametrize("case", XC_CASES, ids=lambda c: c.id)
def test_xla_combine_matches_reference_interpret(case):
    check_case(case, interpret=True, num_batches=3)


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: c.id)
def test_fused_combine_matches_reference_interpret(case):
    check_case(case, interpret=True, num_batches=3)


@pytest.mark.parametrize("case", PREFIX_CASES, ids=lambda c: c.id)
def test_unmasked_prefix_matches_reference_interpret(case):
    check_case(case, interpret=True, num_batches=3)


def _combine_oracle(qsl, o, m, lsum, T, G):
    """numpy: each sequence with query rows: its merged splits in its last row; zeros elsewhere."""
    S, Hkv, NS, _, D = o.shape
    out = np.zeros((T, Hkv * G, D), np.float64)
    for s in range(S):
        if qsl[s + 1] <= qsl[s]:
            continue
        for h in range(Hkv):
            mm = m[s, h, :, :G].astype(np.float64)  # [NS, G]
            w = np.exp2(mm - mm.max(axis=0))
            tot = (w * lsum[s, h, :, :G]).sum(axis=0)
            acc = (w[:, :, None] * o[s, h, :, :G]).sum(axis=0)  # [G, D]
            out[qsl[s + 1] - 1, h * G : (h + 1) * G] = acc / np.where(tot == 0, 1, tot)[:, None]
    return out


def test_xla_combine_matches_combine_kernel():
    """`xla_combine` on hand-made partials against a numpy oracle and the Pallas combine kernel
    (interpret): rows before qsl[0], a sequence without rows, one with two rows (only its last is
    written), padding rows, empty splits, a sequence whose splits are all empty, a split whose max
    exceeds the others' by 300 (log2 units); NaN in the tile's padding rows (r >= G), which
    neither may read."""
    rng = rng_for("xla-combine")
    S, Hkv, NS, M, D, G, T = 4, 2, 4, 16, 32, 4, 10
    qsl = np.array([2, 3, 3, 5, 6], np.int32)
    o = rng.standard_normal((S, Hkv, NS, M, D)).astype(np.float32)
    m = rng.uniform(-5, 5, (S, Hkv, NS, M)).astype(np.float32)
    lsum = rng.uniform(0.5, 4, (S, Hkv, NS, M)).astype(np.float32)
    empty = np.zeros((S, Hkv, NS), bool)
    empty[0, :, 3] = empty[2, 1, 1:] = empty[3] = True  # split with no KV: m NEG, l 0, o 0
    m[2, 0, 2] += 300.0  # one split dominates by 2^300: the others' weights underflow to 0
    m[empty], lsum[empty], o[empty] = NEG, 0.0, 0.0
    o[..., G:, :], m[..., G:], lsum[..., G:] = np.nan, np.nan, np.nan
    expected = _combine_oracle(qsl, o, m, lsum, T, G)
    args = tuple(jnp.asarray(x) for x in (qsl, o, m, lsum))
    got = np.asarray(jax.jit(functools.partial(xla_combine, T=T, G=G, dtype=jnp.float32))(*args))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.count_nonzero(np.abs(got).sum(axis=(1, 2))) == 2  # rows 2 and 4 only (5: all empty)
    kernel_out = pl.pallas_call(
        functools.partial(_combine_kernel, G=G, R=G, num_splits=NS),
        grid=(S, Hkv),
        out_shape=jax.ShapeDtypeStruct((T, Hkv * G, D), jnp.float32),
        interpret=True,
    )(*args)
    np.testing.assert_allclose(got, np.asarray(kernel_out), rtol=1e-6, atol=1e-6)


def test_auto_cases_cover_both_decode_paths():
    """The two automatic-split CPU cases run the single kernel and the split + combine pair."""
    by_name = {c.name: c for c in CPU_CASES}
    chosen = []
    for name in ("dec-g1-d64-bs16-f32-auto1", "dec-g3-d64-bs16-f32-bk16-auto2"):
        c = by_name[name]
        cfg = tuned_block_sizes.lookup(c.D, c.bs, c.dtype, c.G)
        chosen.append(
            rpa_module.decode_plan(
                c.S, c.Hkv, c.P * c.bs, c.bs, cfg, pages_per_compute_block=c.ppcb
            )[0]
        )
    assert chosen[0] == 1 and chosen[1] > 1, chosen


def test_public_output_zero_padding_rows_interpret():
    """The public entry (no buffer given) returns zeros in padding rows, results elsewhere."""
    case = CPU_CASES[0]
    kernel_args, ref_args, n_valid = make_batch(case, 99)
    got = np.asarray(
        ragged_paged_attention(*kernel_args, case.layer, interpret=True, decode_only=False)
    )
    expected = reference(*ref_args, case.layer)
    assert n_valid < got.shape[0]
    np.testing.assert_array_equal(got[n_valid:], 0.0)
    np.testing.assert_allclose(got[:n_valid], expected[:n_valid], rtol=1e-5, atol=1e-5)


def test_traced_layer_inside_scan_interpret():
    """Inside jit + lax.scan over layers the layer index is traced; each step uses its own layer."""
    case = CPU_CASES[0]
    rng = rng_for("scan")
    kernel_args, ref_args, n_valid = make_batch(case, 7)
    q, _, _, bt, kv, qsl = ref_args
    k = jnp.asarray(rng.standard_normal(kernel_args[1].shape, np.float32))
    v = jnp.asarray(rng.standard_normal(kernel_args[2].shape, np.float32))

    @jax.jit
    def all_layers(q, k, v, bt, kv, qsl):
        def step(carry, layer):
            o = ragged_paged_attention(q, k, v, bt, kv, qsl, layer, interpret=True)
            return carry, o

        return jax.lax.scan(step, 0, jnp.arange(L, dtype=jnp.int32))[1]

    got = np.asarray(all_layers(q, k, v, bt, kv, qsl))
    for layer in range(L):
        expected = reference(q, k, v, bt, kv, qsl, layer)
        np.testing.assert_allclose(got[layer, :n_valid], expected[:n_valid], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[layer, n_valid:], 0.0)


def test_resolve_decode_only():
    decode_qsl = jnp.array([0, 1, 1, 2], jnp.int32)
    prefill_qsl = jnp.array([0, 1, 4, 5], jnp.int32)
    assert resolve_decode_only(None, decode_qsl) is True
    assert resolve_decode_only(None, prefill_qsl) is False
    assert resolve_decode_only(False, decode_qsl) is False
    assert resolve_decode_only(True, decode_qsl) is True
    with pytest.raises(ValueError, match="decode_only=True needs at most one query row"):
        resolve_decode_only(True, prefill_qsl)
    # Traced query_start_loc: auto falls back to the general kernel; True is trusted.
    assert jax.jit(lambda x: jnp.int32(resolve_decode_only(None, x)))(decode_qsl) == 0
    assert jax.jit(lambda x: jnp.int32(resolve_decode_only(True, x)))(prefill_qsl) == 1


# --------------------------------------------------------------------------------------------------
# Validation errors.
# --------------------------------------------------------------------------------------------------


GOOD = GOOD_SHAPES


# The checks shared by all backends are tested in test_ragged_inputs.py; these are Pallas's own.
@pytest.mark.parametrize(
    "change, kwargs, message",
    [
        (
            dict(
                q=sds((8, 8, 80)),
                k_pages=sds((2, 10, 2, 16, 80)),
                v_pages=sds((2, 10, 2, 16, 80)),
            ),
            {},
            r"head dim D=80 .* unsupported by the pallas backend",
        ),
        (
            dict(k_pages=sds((2, 10, 2, 12, 64)), v_pages=sds((2, 10, 2, 12, 64))),
            {},
            r"block_size=12 .* must be a power of two",
        ),
        ({}, dict(num_kv_splits=3), r"num_kv_splits must be a power of two"),
        ({}, dict(pages_per_compute_block=6), r"pages_per_compute_block must be a power of two"),
        ({}, dict(block_q=0), r"block_q must be a power of two"),
        (
            {},
            dict(decode_combine="triton"),
            r"decode_combine must be None, 'kernel', 'xla' or 'fused'",
        ),
    ],
)
def test_validation_errors_pallas(change, kwargs, message):
    args = {**GOOD, **change}
    with pytest.raises(ValueError, match=message):
        validate_inputs(*args.values(), 0, **kwargs)


def test_public_entry_validates():
    q = jnp.zeros((4, 6, 64))
    k = jnp.zeros((1, 4, 4, 16, 64))
    bt = jnp.zeros((2, 2), jnp.int32)
    with pytest.raises(ValueError, match=r"Hq=6 .* must be a multiple of Hkv=4"):
        ragged_paged_attention(
            q, k, k, bt, jnp.ones(2, jnp.int32), jnp.array([0, 1, 2], jnp.int32), interpret=True
        )
    q = jnp.zeros((4, 8, 64))
    with pytest.raises(ValueError, match=r"decode_combine must be None, .* or 'fused', got 'X"):
        ragged_paged_attention(
            q, k, k, bt, jnp.ones(2, jnp.int32), jnp.array([0, 1, 2], jnp.int32),
            decode_only=True, decode_combine="X", interpret=True,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Tuning table and the Triton lowering (checked on the CPU by lowering for CUDA).
# --------------------------------------------------------------------------------------------------


def test_tuned_lookup_and_splits():
    cfg = tuned_block_sizes.lookup(128, 16, "bfloat16", 4)
    assert cfg is tuned_block_sizes.TUNED[(128, 16, "bfloat16", 4)]
    fallback = tuned_block_sizes.lookup(64, 64, "float16", 5)
    assert fallback == tuned_block_sizes.default_config(64, 64, "float16", 5)
    assert fallback.decode_pages_per_compute_block == 2  # 128 tokens of 64 x 2 bytes per step
    for c in (cfg, fallback):
        for v in (c.decode_pages_per_compute_block, c.pages_per_compute_block, c.block_q_rows):
            assert v & (v - 1) == 0
    # Few sequences, long context: split up to the cap; many sequences: no split; short contexts
    # (<= 8 compute blocks): one pass, no combine; 16 x 8 programs: 4 splits fill 4 programs per SM.
    split = tuned_block_sizes.choose_num_kv_splits
    assert split(1, 8, 8192, 64, cfg) == 32
    assert split(1, 8, 2048, 64, cfg) == 8
    assert split(1, 8, 1024, 64, cfg) == 4  # 16 compute blocks: split (4 blocks per split)
    assert split(1, 8, 512, 64, cfg) == 1  # 8 compute blocks: single pass
    assert split(16, 8, 512, 64, cfg) == 1
    assert split(256, 8, 8192, 64, cfg) == 1
    assert split(64, 8, 2048, 64, cfg) == 1
    assert split(16, 8, 2048, 64, cfg) == 4
    assert split(16, 8, 2048, 64, cfg, num_sms=100) == 2  # smaller card: fewer programs fit
    assert split(3, 1, 64, 16, cfg) == 1  # one compute block in all: nothing to split


def test_decode_plan_single_pass_and_split():
    """The decode plan without the fused small-grid plan: one kernel (its single-pass knobs on a
    small grid) for short contexts, splits for long ones; knobs the caller sets are kept."""
    plan = rpa_module.decode_plan
    cfg = dataclasses.replace(tuned_block_sizes.lookup(128, 16, "bfloat16", 4), fused_max_waves=0)
    # (splits, pages per compute block, stages, combine); Llama-3-8B shape, 8 KV heads, 132 SMs.
    assert plan(1, 8, 512, 16, cfg, num_sms=132) == (1, 8, 1, "kernel")  # latency-bound one pass
    assert plan(16, 8, 512, 16, cfg, num_sms=132) == (1, 4, 2, "kernel")  # 128 programs
    assert plan(1, 8, 2048, 16, cfg, num_sms=132) == (8, 4, 2, "kernel")  # split + combine
    assert plan(16, 8, 8192, 16, cfg, num_sms=132) == (4, 4, 2, "kernel")
    given = dict(pages_per_compute_block=8, num_stages=3)
    assert plan(1, 8, 512, 16, cfg, num_sms=132, **given) == (1, 8, 3, "kernel")
    assert plan(1, 8, 512, 16, cfg, num_sms=132, pages_per_compute_block=2)[0] == 4  # 16 blocks
    assert plan(1, 8, 512, 16, cfg, num_sms=132, num_kv_splits=2) == (2, 4, 2, "kernel")
    assert plan(1, 8, 2048, 16, cfg, num_sms=132, decode_combine="fused") == (8, 4, 2, "fused")
    untuned = tuned_block_sizes.lookup(64, 16, "float32", 3)  # no single-pass knobs: decode knobs
    assert untuned.fused_max_waves == 0
    assert plan(1, 3, 64, 16, untuned, num_sms=132) == (
        1,
        untuned.decode_pages_per_compute_block,
        2,
        "kernel",
    )


def test_fused_split_plan():
    """The fused small-grid plan of the Llama-3-8B key (2 waves): one block of >= 4 pages per
    split, up to 16 splits of <= 8 pages, grids of <= 2 * 132 programs; else the rules above."""
    cfg = tuned_block_sizes.lookup(128, 16, "bfloat16", 4)
    assert cfg.fused_max_waves == 2.0
    fused = tuned_block_sizes.fused_split_plan
    assert fused(1, 8, 512, 16, 4, cfg) == (8, 4)  # 32 pages: 8 splits of 4
    assert fused(4, 8, 512, 16, 4, cfg) == (8, 4)  # 256 programs
    assert fused(1, 8, 1024, 16, 4, cfg) == (16, 4)
    assert fused(1, 8, 2048, 16, 4, cfg) == (16, 8)
    assert fused(2, 8, 2048, 16, 4, cfg) == (16, 8)  # 256 programs
    assert fused(4, 8, 2048, 16, 4, cfg) is None  # 512 programs > 264
    assert fused(16, 8, 512, 16, 4, cfg) is None
    assert fused(1, 8, 8192, 16, 4, cfg) is None  # 16 blocks of 8 pages do not cover 512 pages
    assert fused(1, 8, 64, 16, 4, cfg) is None  # one block in all: nothing to split
    assert fused(1, 8, 2048, 16, 4, cfg, num_sms=32) is None  # 128 programs > 2 * 32
    plan = rpa_module.decode_plan
    assert plan(1, 8, 512, 16, cfg, num_sms=132) == (8, 4, 2, "fused")
    assert plan(1, 8, 2048, 16, cfg, num_sms=132) == (16, 8, 2, "fused")
    assert plan(1, 8, 2048, 16, cfg, num_sms=132, decode_combine="xla") == (16, 8, 2, "xla")
    assert plan(4, 8, 2048, 16, cfg, num_sms=132) == (8, 4, 2, "kernel")  # the split rule
    assert plan(1, 8, 8192, 16, cfg, num_sms=132) == (32, 4, 2, "kernel")
    assert plan(16, 8, 512, 16, cfg, num_sms=132) == (1, 4, 2, "kernel")
    # The caller's split count or pages per block switch the fused plan off.
    assert plan(1, 8, 512, 16, cfg, num_sms=132, num_kv_splits=1) == (1, 8, 1, "kernel")
    assert plan(1, 8, 512, 16, cfg, num_sms=132, pages_per_compute_block=4)[3] == "kernel"


def test_one_block_plan_and_decode_combine_rule():
    """The JAX-like split plan (one compute block per split) and the XLA-combine rule: off in the
    table (defaults 0), exact values once a config enables them."""
    one = tuned_block_sizes.one_block_split_plan
    assert one(512, 16, 1) == (16, 2)  # JAX's op at 1 x 512: 16 splits of 2 pages
    assert one(2048, 16, 1) == (16, 8)
    assert one(8192, 16, 1) == (16, 8)  # capped at 8 pages: 4 blocks per split
    assert one(1024, 16, 1) == (16, 4)
    assert one(48, 16, 1) == (4, 1)  # 3 pages: 4 splits of one page (one empty)
    assert one(16, 16, 1) == (1, 1)
    assert one(512, 8, 2) == (16, 4)  # 64 pages of 8 tokens
    assert one(100, 16, 1, max_splits=4, max_pages=2) == (4, 2)
    assert one(64, 8, 2, max_splits=16, max_pages=1) == (4, 2)  # min_pages wins over max_pages

    plan = rpa_module.decode_plan
    resolve = rpa_module.resolve_decode_combine
    base = dataclasses.replace(tuned_block_sizes.lookup(128, 16, "bfloat16", 4), fused_max_waves=0)
    assert base.xla_combine_max_programs == 0 and base.one_block_max_programs == 0
    assert tuned_block_sizes.choose_decode_combine(1, 8, 16, base) == "kernel"
    assert resolve(None, 1, 8, 8, base) == "kernel"
    cfg = dataclasses.replace(base, xla_combine_max_programs=8, one_block_max_programs=8)
    assert plan(1, 8, 512, 16, cfg, num_sms=132) == (16, 2, 2, "xla")
    assert plan(1, 8, 2048, 16, cfg, num_sms=132) == (16, 8, 2, "xla")
    assert plan(1, 8, 2048, 16, cfg, num_sms=132, num_stages=3) == (16, 8, 3, "xla")
    staged = dataclasses.replace(cfg, one_block_num_stages=1)
    assert plan(1, 8, 2048, 16, staged, num_sms=132) == (16, 8, 1, "xla")
    assert plan(2, 8, 2048, 16, cfg, num_sms=132) == (8, 4, 2, "kernel")  # 16 programs: the rule
    assert plan(1, 8, 2048, 16, cfg, num_sms=132, num_kv_splits=4) == (4, 4, 2, "xla")  # caller's
    assert plan(1, 8, 2048, 16, cfg, num_sms=132, pages_per_compute_block=2)[1] == 2
    choose = tuned_block_sizes.choose_decode_combine
    assert choose(1, 8, 16, cfg) == "xla"
    assert choose(2, 8, 16, cfg) == "kernel"  # 16 (sequence, KV head) pairs > 8
    assert choose(1, 8, 1, cfg) == "kernel"  # one split: nothing to merge
    assert resolve(None, 1, 8, 16, cfg) == "xla"
    assert resolve("kernel", 1, 8, 16, cfg) == "kernel"
    assert resolve("xla", 64, 8, 2, base) == "xla"
    assert resolve("xla", 1, 8, 1, base) == "kernel"
    assert resolve("fused", 1, 8, 1, base) == "kernel"


def _can_lower_for_cuda() -> bool:
    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...] + 1.0

    f = pl.pallas_call(
        kernel, out_shape=sds((16,)), compiler_params=TritonParams(num_warps=4, num_stages=1)
    )
    try:
        jax.jit(f).trace(sds((16,))).lower(lowering_platforms=("cuda",))
    except Exception:  # this jaxlib cannot lower Pallas for CUDA at all
        return False
    return True


def _abstract_args(T, Hkv, G, D, L_, N, bs, S, P, dtype):
    """Shape-only arguments of `ragged_paged_attention` (q, k, v, block tables, kv lens, query
    start offsets, layer) for lowering without data."""
    kv = sds((L_, N, Hkv, bs, D), dtype)
    return (
        sds((T, Hkv * G, D), dtype), kv, kv, sds((S, P), jnp.int32), sds((S,), jnp.int32),
        sds((S + 1,), jnp.int32), sds((), jnp.int32),
    )  # fmt: skip


@pytest.mark.skipif(ON_GPU, reason="the GPU class compiles for real")
@pytest.mark.parametrize(
    "G, D, bs, dtype, decode, splits, window, L_, N, T, S, P",
    [
        (4, 128, 16, "bfloat16", True, 1, None, 2, 64, 16, 8, 8),
        (4, 128, 16, "bfloat16", True, 8, None, 2, 64, 16, 8, 8),
        (8, 128, 32, "float32", False, None, 64, 2, 64, 64, 4, 8),
        (3, 64, 16, "float16", False, None, None, 2, 64, 64, 4, 8),
        (4, 256, 16, "bfloat16", True, None, 512, 2, 64, 8, 4, 8),
        # automatic split count: short table, few sequences -> the fused plan (one kernel); long
        # table -> split + combine kernel; short table, more sequences -> one pass (one kernel)
        (4, 128, 16, "bfloat16", True, None, None, 2, 64, 16, 1, 32),
        (4, 128, 16, "bfloat16", True, None, None, 2, 4096, 16, 1, 1024),
        (4, 128, 16, "bfloat16", True, None, None, 2, 4096, 128, 96, 32),
        # > 4 GiB stacked cache: 64-bit offsets in the gathers.
        (4, 128, 16, "bfloat16", True, 1, None, 4, 65536, 64, 64, 64),
        (4, 128, 16, "bfloat16", False, None, None, 4, 65536, 512, 8, 64),
    ],
)
def test_lowers_to_triton_for_cuda(G, D, bs, dtype, decode, splits, window, L_, N, T, S, P):
    if not _can_lower_for_cuda():
        pytest.skip("this jaxlib cannot lower Pallas kernels for CUDA")
    Hkv = 2
    args = _abstract_args(T, Hkv, G, D, L_, N, bs, S, P, dtype)
    f = jax.jit(
        lambda *a: ragged_paged_attention(
            *a, decode_only=decode, num_kv_splits=splits, sliding_window=window
        )
    )
    text = f.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    kernels = text.count("__gpu$xla.gpu.triton")  # Triton kernels (no Mosaic GPU)
    if not decode:
        assert kernels == 1
        return
    # Decode: the split kernel plus the combine kernel when split (one kernel with the fused
    # combine, plus its zeroed counters), and nothing else that could launch a kernel of its own
    # (no zero-fill, no scatter, no jnp combine).
    max_kv = P * bs if window is None else min(P * bs, window + bs)
    cfg = tuned_block_sizes.lookup(D, bs, dtype, G)
    planned, _, _, combine = rpa_module.decode_plan(S, Hkv, max_kv, bs, cfg, num_kv_splits=splits)
    assert splits is None or planned == splits
    assert kernels == (2 if planned > 1 and combine == "kernel" else 1)
    ops = set(re.findall(r"= \"?(stablehlo\.\w+)", text))
    allowed = {"stablehlo.custom_call", "stablehlo.reshape"}
    if combine == "fused":
        allowed |= {"stablehlo.constant", "stablehlo.broadcast_in_dim"}
    assert ops <= allowed, ops


@pytest.mark.skipif(ON_GPU, reason="the GPU class compiles for real")
def test_unmasked_prefix_lowers_for_cuda():
    """The general kernel with its unmasked prefix loop lowers to one Triton kernel."""
    if not _can_lower_for_cuda():
        pytest.skip("this jaxlib cannot lower Pallas kernels for CUDA")
    args = _abstract_args(512, 2, 4, 128, 2, 64, 16, 8, 64, "bfloat16")
    f = jax.jit(lambda *a: ragged_paged_attention(*a, unmasked_prefix=True))
    assert f.trace(*args).lower(lowering_platforms=("cuda",)).as_text().count("xla.gpu.triton") == 1


@pytest.mark.skipif(ON_GPU, reason="the GPU class compiles for real")
@pytest.mark.parametrize("combine", ["xla", "fused"])
@pytest.mark.parametrize("S, P, splits, ppcb, window", [(1, 32, 16, 2, None), (4, 16, 4, None, 40)])
def test_split_combines_lower_for_cuda(S, P, splits, ppcb, window, combine):
    """One Triton kernel (the split kernel) for both merges. decode_combine="xla": then plain XLA
    ops, no scatter, no loop, no reduction (the split and sequence loops are unrolled into
    elementwise ops). "fused": around it only the zeroed arrival counters (a broadcast constant)
    and reshapes, no jnp merge."""
    if not _can_lower_for_cuda():
        pytest.skip("this jaxlib cannot lower Pallas kernels for CUDA")
    G, D, bs, Hkv, T = 4, 128, 16, 8, 2 * S
    args = _abstract_args(T, Hkv, G, D, 2, 64, bs, S, P, "bfloat16")
    f = jax.jit(
        lambda *a: ragged_paged_attention(
            *a, decode_only=True, num_kv_splits=splits, pages_per_compute_block=ppcb,
            sliding_window=window, decode_combine=combine,
        )
    )  # fmt: skip
    text = f.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 1
    ops = set(re.findall(r"= \"?(stablehlo\.\w+)", text))
    if combine == "xla":
        assert not ops & {"stablehlo.scatter", "stablehlo.while", "stablehlo.reduce"}, ops
    else:
        allowed = {"stablehlo.custom_call", "stablehlo.reshape", "stablehlo.constant"}
        assert ops <= allowed | {"stablehlo.broadcast_in_dim"}, ops


# --------------------------------------------------------------------------------------------------
# GPU (compiled through Triton).
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU (jax.devices()[0].platform == 'gpu')")
class TestCompiledOnGpu:
    @pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.id)
    def test_matches_reference(self, case):
        check_case(case, interpret=False, num_batches=3)

    def test_public_output_zero_padding_rows(self):
        case = CPU_CASES[0]
        kernel_args, ref_args, n_valid = make_batch(case, 99)
        got = np.asarray(ragged_paged_attention(*kernel_args, case.layer))
        expected = reference(*ref_args, case.layer)
        np.testing.assert_array_equal(got[n_valid:], 0.0)
        np.testing.assert_allclose(got[:n_valid], expected[:n_valid], rtol=1e-5, atol=1e-5)

    def test_auto_splits_and_defaults(self):
        """No tuning knobs given: tuned defaults and the auto split count."""
        by_name = {c.name: c for c in GPU_CASES}
        for case in (
            by_name["gpu-dec-g4-d128-bs16-bf16-long"],
            by_name["gpu-gen-g4-d128-bs16-bf16-long"],
        ):
            plain = dataclasses.replace(
                case, splits=None, ppcb=None, block_q=None, name=case.name + "-auto"
            )
            check_case(plain, interpret=False, num_batches=2)
