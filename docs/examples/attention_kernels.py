"""The paged-attention kernels as plain functions: one call signature for every backend."""

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import ragged_paged_attention, ragged_paged_attention_reference

# Two sequences in one ragged batch: a 5-token prefill chunk and a 1-token decode.
Hq, Hkv, D, bs = 4, 2, 64, 16  # query heads, KV heads, head dim, tokens per KV block
kv_lens = jnp.array([5, 20], jnp.int32)  # [S] tokens of each sequence in the cache
query_start_loc = jnp.array([0, 5, 6], jnp.int32)  # [S + 1] sequence s owns rows qsl[s]:qsl[s+1]
block_tables = jnp.array([[0, 0], [1, 2]], jnp.int32)  # [S, P] the KV blocks of each sequence

kq, kk, kv = jax.random.split(jax.random.key(0), 3)
q = jax.random.normal(kq, (6, Hq, D), jnp.float32)  # [T, Hq, D]
k_pages = jax.random.normal(kk, (1, 3, Hkv, bs, D), jnp.float32)  # [L, N, Hkv, bs, D]
v_pages = jax.random.normal(kv, (1, 3, Hkv, bs, D), jnp.float32)  # [L, N, Hkv, bs, D]
args = (q, k_pages, v_pages, block_tables, kv_lens, query_start_loc)

ref = ragged_paged_attention_reference(*args, layer=0)  # pure jnp: runs anywhere, the oracle
# The Pallas kernel; `interpret=True` runs it in the Pallas interpreter on any backend (slow).
out = ragged_paged_attention(*args, layer=0, interpret=jax.default_backend() != "gpu")
print(out.shape, float(np.max(np.abs(np.asarray(out) - np.asarray(ref)))))
