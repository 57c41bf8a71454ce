"""A small CUDA-backend case to run under compute-sanitizer (GPU):

    XLA_PYTHON_CLIENT_ALLOCATOR=platform compute-sanitizer --tool memcheck --error-exitcode 9 \\
        python -m cuda_ext.memcheck_case

Runs the single-row (decode) kernels (CUDA-core float32, tensor-core bfloat16/float16) with 1 and 2
KV splits (+ the combine kernel), the multi-row
kernel (prefill chunks, sliding window, 2 splits) and the multi-row decode fallback (G > 8), on tiny
batches whose unused block-table entries hold out-of-range ids and whose unowned cache slots hold
NaN, and checks each result against a float64 numpy loop (no jitted reference: under the sanitizer
every XLA kernel is instrumented too, and the jitted reference made an earlier run too slow).
With XLA's platform allocator every buffer is its own allocation, so any out-of-bounds access is
reported. Exits 0 when every result matches, 1 otherwise.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def numpy_reference(q, k, v, block_tables, kv_lens, qsl, layer, window=None):
    """float64 loop over query rows: causal (and windowed) softmax attention over its pages."""
    T, Hq, D = q.shape
    Hkv, bs = k.shape[2], k.shape[3]
    G = Hq // Hkv
    out = np.zeros((T, Hq, D))
    for s in range(len(kv_lens)):
        q_len = qsl[s + 1] - qsl[s]
        for i in range(q_len):
            pos = kv_lens[s] - q_len + i
            toks = np.arange(pos + 1)
            if window is not None:
                toks = toks[toks > pos - window]
            pages = block_tables[s, toks // bs]
            for h in range(Hq):
                kk = k[layer, pages, h // G, toks % bs].astype(np.float64)  # [n, D]
                vv = v[layer, pages, h // G, toks % bs].astype(np.float64)
                sc = kk @ q[qsl[s] + i, h].astype(np.float64) * D**-0.5
                p = np.exp(sc - sc.max())
                out[qsl[s] + i, h] = p @ vv / p.sum()
    return out


def make_case(rng, *, S, G, Hkv, D, bs, P, q_lens, L=2, layer=1):
    kv_lens = np.array([min(P * bs, q + int(rng.integers(0, P * bs))) for q in q_lens], np.int32)
    kv_lens = np.maximum(kv_lens, np.array(q_lens))
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    T = int(qsl[-1]) + 2  # two padding rows
    N = S * P + 3
    pool = rng.permutation(N)
    bt = np.full((S, P), N + 5, np.int32)  # unused entries: out of range
    start = 0
    for s in range(S):
        n = -(-int(kv_lens[s]) // bs)
        bt[s, :n] = pool[start : start + n]
        start += n
    k = rng.standard_normal((L, N, Hkv, bs, D)).astype(np.float32)
    v = rng.standard_normal((L, N, Hkv, bs, D)).astype(np.float32)
    live = np.zeros((L, N, Hkv, bs), bool)
    for s in range(S):
        for t in range(kv_lens[s]):
            live[layer, bt[s, t // bs], :, t % bs] = True
    k_bad = np.where(live[..., None], k, np.nan).astype(np.float32)
    v_bad = np.where(live[..., None], v, np.nan).astype(np.float32)
    q = rng.standard_normal((T, Hkv * G, D)).astype(np.float32)
    return (q, k_bad, v_bad, bt, kv_lens, qsl), (q, k, v, bt, kv_lens, qsl), layer


def main() -> int:
    import jax.numpy as jnp

    from .attention import ragged_paged_attention_cuda

    rng = np.random.default_rng(0)
    cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [  # (name, shape, call kwargs)
        (
            "decode row kernel, 1 split",
            dict(S=3, G=4, Hkv=2, D=128, bs=16, P=4, q_lens=[1, 0, 1]),
            dict(decode_only=True, num_kv_splits=1),
        ),
        (
            "decode row kernel, 2 splits",
            dict(S=3, G=4, Hkv=2, D=128, bs=16, P=4, q_lens=[1, 1, 0]),
            dict(decode_only=True, num_kv_splits=2),
        ),
        (
            "decode tensor-core kernel (bfloat16), 1 split",
            dict(S=3, G=4, Hkv=2, D=128, bs=16, P=4, q_lens=[1, 0, 1]),
            dict(decode_only=True, num_kv_splits=1, dtype="bfloat16"),
        ),
        (
            "decode tensor-core kernel (float16, D 64, G 3), 2 splits",
            dict(S=3, G=3, Hkv=2, D=64, bs=16, P=4, q_lens=[1, 1, 0]),
            dict(decode_only=True, num_kv_splits=2, dtype="float16"),
        ),
        (
            "decode multi-row fallback (G=16), 2 splits",
            dict(S=2, G=16, Hkv=1, D=64, bs=16, P=3, q_lens=[1, 1]),
            dict(decode_only=True, num_kv_splits=2),
        ),
        (
            "general, window 9, 2 splits",
            dict(S=4, G=2, Hkv=2, D=64, bs=16, P=4, q_lens=[5, 1, 0, 12]),
            dict(sliding_window=9, num_kv_splits=2),
        ),
    ]
    failed = 0
    for name, shape, kw in cases:
        kernel_args, ref_args, layer = make_case(rng, **shape)
        dtype = kw.pop("dtype", "float32")
        args = [jnp.asarray(a) for a in kernel_args]
        args[:3] = [a.astype(dtype) for a in args[:3]]  # q, k, v (NaN poison survives the cast)
        got = np.asarray(ragged_paged_attention_cuda(*args, layer, **kw)).astype(np.float32)
        want = numpy_reference(*ref_args, layer, window=kw.get("sliding_window"))
        n_valid = int(ref_args[5][-1])
        tol = 1e-4 if dtype == "float32" else 5e-2  # 16-bit inputs against a float32 reference
        ok = (
            np.allclose(got[:n_valid], want[:n_valid], rtol=tol, atol=tol)
            and not got[n_valid:].any()
        )
        err = float(np.nanmax(np.abs(got[:n_valid] - want[:n_valid]))) if n_valid else 0.0
        print(f"{name}: {'ok' if ok else 'MISMATCH'} (max abs err {err:.2e})", flush=True)
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
