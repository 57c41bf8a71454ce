"""The `cpu` attention backend (pallas_kernels/cpu_paged_attention.py) vs the pure-jnp reference.

Every batch is drawn fresh and poisoned by `ragged_batches.make_batch` (NaN/inf/3e38 in every
cache slot no sequence owns, NaN padding query rows, garbage block ids past each table's pages):
the backend must match the reference run on the clean inputs, give exact zeros in padding rows and
no NaN anywhere. Then: engine-style padding (null block 0, kv_len 0), a traced layer under scan,
bad input, the backend registry and default, and tensor parallelism (a subprocess on 4 virtual
CPU devices). End to end, `cpu` is the CPU default, so tests/engine/test_llm_vs_hf.py checks its
greedy SmolLM2 tokens against HF transformers.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ragged_batches import (
    GOOD_SHAPES,
    Case,
    L,
    engine_padding_batch,
    make_batch,
    reference,
    rng_for,
    sds,
    tolerance,
)

from jaxllm.layers import attention
from pallas_kernels.cpu_paged_attention import default_query_block, ragged_paged_attention_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every GQA ratio 1..8, head dims 64/128, block sizes 16/32, both paths, sliding windows, bf16.
CASES = [
    Case("dec-g1-d64-bs16", 1, 64, 16, "float32", True, T=8),
    Case("dec-g2-d128-bs32", 2, 128, 32, "float32", True, layer=0, T=5),
    Case("dec-g3-d64-bs16-window", 3, 64, 16, "float32", True, window=20, T=8),
    Case("dec-g5-d64-bs32", 5, 64, 32, "float32", True, Hkv=1, S=7, T=8, P=5),
    Case("dec-g8-d128-bs16", 8, 128, 16, "float32", True, Hkv=1, T=5),
    Case("dec-g4-d64-bs16-bf16", 4, 64, 16, "bfloat16", True, T=8),
    Case("gen-g1-d64-bs16", 1, 64, 16, "float32", False),
    Case("gen-g3-d64-bs16", 3, 64, 16, "float32", False, S=6, T=64, P=6),
    Case("gen-g4-d128-bs32-bq4", 4, 128, 32, "float32", False, block_q=4),
    Case("gen-g6-d64-bs32-window", 6, 64, 32, "float32", False, Hkv=1, window=13, P=3),
    Case("gen-g7-d64-bs16-bq1", 7, 64, 16, "float32", False, Hkv=1, block_q=1, T=24),
    Case("gen-g8-d128-bs16-bq32", 8, 128, 16, "float32", False, Hkv=1, block_q=32, layer=0),
    Case("gen-g2-d64-bs16-bf16", 2, 64, 16, "bfloat16", False),
]


@functools.cache
def _jitted(window, query_block, decode_only):
    return jax.jit(
        functools.partial(
            ragged_paged_attention_cpu,
            sliding_window=window,
            query_block=query_block,
            decode_only=decode_only,
        )
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(case):
    fn = _jitted(case.window, case.block_q, case.decode)
    for seed in range(3):
        kernel_args, ref_args, n_valid = make_batch(case, seed)
        expected = reference(*ref_args, case.layer, sliding_window=case.window)
        got = fn(*kernel_args, case.layer)
        assert got.dtype == kernel_args[0].dtype and got.shape == kernel_args[0].shape
        got = np.asarray(got.astype(jnp.float32))
        msg = f"{case.name} batch {seed}"
        assert np.isfinite(got).all(), msg
        np.testing.assert_allclose(
            got[:n_valid], expected[:n_valid], err_msg=msg, **tolerance(case.dtype)
        )
        np.testing.assert_array_equal(got[n_valid:], 0.0, err_msg=msg)


@pytest.mark.parametrize("decode_only", [True, False])
def test_engine_padding_sequences(decode_only):
    """As the engine pads a batch: sequences with kv_len 0, no query rows and a table of null
    block 0 (whose slots hold another sequence's stale data), and padding query rows."""
    q_lens = (
        np.array([1, 1, 1, 1, 1, 0, 0, 0]) if decode_only else np.array([1, 9, 1, 30, 1, 0, 0, 0])
    )
    kv_lens = q_lens + np.array([40, 0, 15, 2, 63, 0, 0, 0])
    rng = rng_for("engine-padding", decode_only)
    args, n = engine_padding_batch(rng, q_lens, kv_lens, T=8 if decode_only else 48)
    got = np.asarray(_jitted(None, None, decode_only)(*args, 1))
    expected = reference(*args, 1)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[:n], expected[:n], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[n:], 0.0)
    np.testing.assert_array_equal(expected[n:], 0.0)


def test_traced_layer_inside_scan():
    """Under jit + lax.scan the layer index is traced; each step reads its own layer."""
    for decode in (True, False):
        case = Case("scan", 3, 64, 16, "float32", decode, T=5 if decode else 48)
        _, ref_args, n_valid = make_batch(case, 5)
        q, _, _, bt, kv, qsl = ref_args
        rng = rng_for("scan", decode)
        k = jnp.asarray(rng.standard_normal(ref_args[1].shape, np.float32))
        v = jnp.asarray(rng.standard_normal(ref_args[2].shape, np.float32))

        @jax.jit
        def all_layers(q, k, v, bt, kv, qsl, decode=decode):
            def step(carry, li):
                o = ragged_paged_attention_cpu(q, k, v, bt, kv, qsl, li, decode_only=decode)
                return carry, o

            return jax.lax.scan(step, 0, jnp.arange(L, dtype=jnp.int32))[1]

        got = np.asarray(all_layers(q, k, v, bt, kv, qsl))
        for layer in range(L):
            expected = reference(q, k, v, bt, kv, qsl, layer)
            np.testing.assert_allclose(
                got[layer, :n_valid], expected[:n_valid], rtol=1e-5, atol=1e-5
            )


@pytest.mark.parametrize(
    "change, kwargs, message",
    [
        ({}, dict(query_block=3), "query_block must be a power of two"),
        (dict(q=sds((8, 7, 64))), {}, "must be a multiple of Hkv"),
        ({}, dict(sliding_window=0), "sliding_window must be a positive int"),
        ({}, dict(layer=2), "layer=2 out of range"),
    ],
)
def test_validation_errors(change, kwargs, message):
    args = {**GOOD_SHAPES, **change}
    kwargs = {"layer": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(functools.partial(ragged_paged_attention_cpu, **kwargs), *args.values())


def test_decode_only_with_long_query_is_rejected():
    case = Case("bad-decode", 2, 64, 16, "float32", False)
    kernel_args, _, _ = make_batch(case, 0)
    with pytest.raises(ValueError, match="decode_only=True needs at most one query row"):
        ragged_paged_attention_cpu(*kernel_args, 1, decode_only=True)


def test_default_query_block():
    assert default_query_block(2048, 16) == 32  # prefill: capped
    assert default_query_block(256, 16) == 16  # about the mean query length
    assert default_query_block(48, 5) == 8
    assert default_query_block(16, 16) == 1 and default_query_block(4, 16) == 1


def test_backend_registered_and_default_on_cpu(monkeypatch):
    assert "cpu" in attention.BACKENDS
    monkeypatch.setenv("JAXLLM_CPU_KERNELS", "xla")  # jnp only
    assert attention.get_attention_fn("cpu") is ragged_paged_attention_cpu
    monkeypatch.delenv("JAXLLM_CPU_KERNELS")  # cpu_ext's decode kernel where it can run
    from cpu_ext import registry
    from cpu_ext.attention import ragged_paged_attention_cpu_ext

    want = (
        ragged_paged_attention_cpu
        if registry.missing_requirements()
        else (ragged_paged_attention_cpu_ext)
    )
    assert attention.get_attention_fn("cpu") is want
    monkeypatch.delenv(attention.ENV_VAR, raising=False)
    assert attention.default_backend() == ("cpu" if jax.default_backend() == "cpu" else "pallas")
    monkeypatch.setenv(attention.ENV_VAR, "reference")
    assert attention.resolve_backend(None) == "reference"


_TP_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from jaxllm.layers.attention import sharded_attention_fn, sharded_kv_write_fn
    from pallas_kernels.reference import ragged_paged_attention_reference as ref, write_kv_pages
    from ragged_batches import Case, make_batch, reference
    mesh = Mesh(np.array(jax.devices()).reshape(1, 4), ("data", "model"))
    errs = []
    for decode in (True, False):
        case = Case("tp", 2, 64, 16, "float32", decode, Hkv=4, T=5 if decode else 48)
        kernel_args, ref_args, n = make_batch(case, 3)
        fn = sharded_attention_fn("cpu", mesh)
        got = jax.jit(lambda *a, d=decode: fn(*a, decode_only=d, sm_scale=0.125))(*kernel_args, 1)
        want = np.asarray(ref(*ref_args, 1, sm_scale=0.125))
        got = np.asarray(got)
        errs.append(float(np.abs(got[:n] - want[:n]).max()))
        errs.append(float(np.abs(got[n:]).max()) if n < got.shape[0] else 0.0)
        # fp8 pages: the KV write and attention per device, against the unsharded reference
        f8, sc = jnp.float8_e4m3fn, dict(k_scale=0.5, v_scale=2.0)
        q, k, v, *meta = ref_args  # clean pages (the poison's inf has no e4m3 value)
        rows = jnp.nan_to_num(q)  # (padding query rows are NaN)
        new_k, new_v = 2 * rows[:, ::2], 3 * rows[:, 1::2]  # [T, Hkv, D] rows to write
        slots = jnp.arange(q.shape[0], dtype=jnp.int32) + 16
        write = sharded_kv_write_fn(mesh)
        def step(q, k, v, *meta, d=decode):
            k, v = write(k, v, new_k, new_v, slots, 1, **sc)
            return k, v, fn(q, k, v, *meta, 1, decode_only=d, sm_scale=0.125, **sc)
        k8, v8, got = jax.jit(step)(q, k.astype(f8), v.astype(f8), *meta)
        rk, rv = write_kv_pages(k.astype(f8), v.astype(f8), new_k, new_v, slots, 1, **sc)
        errs.append(float(np.abs(np.asarray(k8, np.float32) - np.asarray(rk, np.float32)).max()))
        errs.append(float(np.abs(np.asarray(v8, np.float32) - np.asarray(rv, np.float32)).max()))
        want = np.asarray(ref(q, rk, rv, *meta, 1, sm_scale=0.125, **sc))
        errs.append(float(np.abs(np.asarray(got)[:n] - want[:n]).max()))
    print(json.dumps({"devices": len(jax.devices()), "errs": errs}))
    """
)


def test_tensor_parallel_shard_map():
    """Under sharded_attention_fn on a 4-way 'model' axis (4 virtual CPU devices), the cpu backend
    gives the unsharded reference's result (one KV head and its 2 query heads per device); with
    fp8 pages too, after sharded_kv_write_fn wrote this step's rows as the unsharded write does."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    # the checkout and this folder (the script imports ragged_batches), then the caller's path
    here = os.path.join(ROOT, "tests", "kernels")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, here, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _TP_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    assert len(result["errs"]) == 10 and all(e < 1e-5 for e in result["errs"]), result
