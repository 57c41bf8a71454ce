"""On-device sampler: pure JAX functions, usable inside the caller's `jax.jit`.

    out = sample(logits, md, flags)   # flags: SamplerFlags, a static argument

Processing order (as vLLM's v1 sampler):
  0. structured outputs: tokens a row's grammar forbids (its bitmask) -> -inf
  1. logit bias, then bans (-inf; eos/stop ids while output < min_tokens)
  2. repetition penalty over prompt + output tokens (HF semantics: positive logits divided by the
     penalty, negative ones multiplied)
  3. frequency and presence penalties over output tokens (OpenAI semantics)
  4. greedy rows (temperature < 1e-5): exact argmax of the processed logits
  5. other rows: divide by temperature, min-p, top-k, then top-p (the smallest set of tokens whose
     probability mass is >= top_p, at least one token), then a Gumbel-max draw with the row's own
     key `fold_in(key(seed), gen_index)`, so a row's tokens do not depend on the batch around it.
Top-k/top-p use no sort: their thresholds are found by exact bisection on the float bit pattern
(32 passes over [R, V] each, a few times faster than a row sort on CPU). They keep every token
whose logit ties the threshold logit. Logprobs come from the RAW logits (vLLM's default
"raw_logprobs"), whatever the processing.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxllm.sampling_metadata import SamplerFlags, SamplingMetadata

_SAMPLING_EPS = 1e-5


class SamplerOutput(NamedTuple):
    token_ids: jax.Array  # [R] int32
    logprobs: jax.Array  # [R, K+1] f32; column 0 = sampled token, 1.. = top-K
    logprob_token_ids: jax.Array  # [R, K+1] int32
    token_ranks: jax.Array  # [R] int32; 1-based rank of the sampled token under the raw logits


class LogprobsOutput(NamedTuple):
    logprobs: jax.Array  # [N, K+1] f32
    logprob_token_ids: jax.Array  # [N, K+1] int32
    token_ranks: jax.Array  # [N] int32


def _safe_ids(ids: jax.Array, vocab_size: int) -> jax.Array:
    """Map pad ids (< 0) out of range so `.at[..., mode='drop']` skips them (negatives wrap)."""
    return jnp.where(ids < 0, vocab_size, ids)


def apply_token_bitmask(logits: jax.Array, md: SamplingMetadata, flags: SamplerFlags) -> jax.Array:
    """logits [R, V] -> the tokens a row's grammar forbids (bit 0 in md.allowed_bitmask [R, W])
    set to -inf (structured outputs). Rows without a grammar have every bit set."""
    if not flags.any_structured:
        return logits
    R, V = logits.shape
    W = md.allowed_bitmask.shape[1]
    shifts = jnp.arange(32, dtype=jnp.int32)
    bits = (md.allowed_bitmask[:, :, None] >> shifts) & 1  # [R, W, 32]
    allowed = bits.reshape(R, W * 32)[:, :V] != 0
    return jnp.where(allowed, logits, -jnp.inf)


def apply_logit_bias_and_bans(
    logits: jax.Array, md: SamplingMetadata, flags: SamplerFlags
) -> jax.Array:
    """logits [R, V] -> logits with bias added and banned ids set to -inf."""
    R, V = logits.shape
    rows = jnp.arange(R)[:, None]  # [R, 1]
    if flags.any_logit_bias and md.logit_bias_ids.shape[1] > 0:
        ids = _safe_ids(md.logit_bias_ids, V)  # [R, B]
        logits = logits.at[rows, ids].add(md.logit_bias_values.astype(logits.dtype), mode="drop")
    if md.banned_ids.shape[1] > 0:
        ids = _safe_ids(md.banned_ids, V)  # [R, Bn]
        logits = logits.at[rows, ids].set(-jnp.inf, mode="drop")
    return logits


def apply_penalties(logits: jax.Array, md: SamplingMetadata, flags: SamplerFlags) -> jax.Array:
    """Repetition (prompt + output), then frequency and presence (output) penalties. [R, V]."""
    if not flags.any_penalties:
        return logits
    R, V = logits.shape
    rows = jnp.arange(R)[:, None]  # [R, 1]
    out_ids = _safe_ids(md.output_token_ids, V)  # [R, Lo]
    counts = jnp.zeros((R, V), jnp.int32).at[rows, out_ids].add(1, mode="drop")  # [R, V]
    seen = counts > 0
    if md.prompt_token_ids.shape[1] > 0:
        prompt_ids = _safe_ids(md.prompt_token_ids, V)  # [R, Lp]
        seen = seen.at[rows, prompt_ids].set(True, mode="drop")
    penalty = md.repetition_penalty[:, None].astype(logits.dtype)  # [R, 1]
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    logits = jnp.where(seen, penalized, logits)
    logits = logits - md.frequency_penalty[:, None] * counts.astype(logits.dtype)
    logits = logits - md.presence_penalty[:, None] * (counts > 0).astype(logits.dtype)
    return logits


def _sortable_key(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (negative floats: flip all bits; others: set sign)."""
    u = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where((u >> 31) == 1, ~u, u | jnp.uint32(0x80000000))


def _largest_key_where(pred, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Per-row bisection over uint32 keys: the largest t in [lo, hi] with pred(t) true, for a pred
    that is true at lo and monotone non-increasing in t. lo, hi [R] -> [R]. 32 steps, exact."""

    def step(_, carry):
        lo, hi = carry
        span = hi - lo
        mid = lo + span // 2 + (span & 1)  # ceil midpoint without overflow
        active = lo < hi
        ok = pred(mid)
        return jnp.where(active & ok, mid, lo), jnp.where(active & ~ok, mid - 1, hi)

    lo, _ = jax.lax.fori_loop(0, 32, step, (lo, hi))
    return lo


def _top_k_top_p_mask(x: jax.Array, md: SamplingMetadata, flags: SamplerFlags) -> jax.Array:
    """x [R, V] (temperature-scaled) -> [R, V] bool, the tokens kept by top-k then top-p.

    No sort: each cut is a threshold found by bisection on the float bit pattern (one pass over
    [R, V] per step), so the kept set is exactly a sorted prefix, ties at the threshold included.
    """
    R, V = x.shape
    keys = _sortable_key(x)  # [R, V]
    lo, hi = jnp.min(keys, axis=-1), jnp.max(keys, axis=-1)  # [R]
    threshold = lo
    if flags.any_top_k:
        k = jnp.where((md.top_k <= 0) | (md.top_k >= V), V, md.top_k)  # [R]
        threshold = _largest_key_where(lambda t: jnp.sum(keys >= t[:, None], axis=-1) >= k, lo, hi)
    if flags.any_top_p:
        kept = keys >= threshold[:, None]
        weights = jnp.where(kept, jnp.exp(x - jnp.max(x, axis=-1, keepdims=True)), 0.0)  # [R, V]
        target = md.top_p * jnp.sum(weights, axis=-1)  # [R]
        t_p = _largest_key_where(
            lambda t: jnp.sum(jnp.where(keys >= t[:, None], weights, 0.0), axis=-1) >= target,
            threshold,
            hi,
        )
        threshold = jnp.where(md.top_p < 1.0, t_p, threshold)
    return keys >= threshold[:, None]


def apply_temperature_and_truncation(
    logits: jax.Array, md: SamplingMetadata, flags: SamplerFlags
) -> jax.Array:
    """Processed logits [R, V] -> temperature-scaled logits with min-p/top-k/top-p cuts at -inf."""
    temperature = jnp.where(md.temperature < _SAMPLING_EPS, 1.0, md.temperature)  # greedy rows: 1
    x = logits / temperature[:, None].astype(logits.dtype)
    if flags.any_min_p:
        # prob >= min_p * max_prob  <=>  x - max(x) >= log(min_p)
        x_max = jnp.max(x, axis=-1, keepdims=True)
        x = jnp.where(x - x_max < jnp.log(md.min_p)[:, None], -jnp.inf, x)
    if flags.any_top_k or flags.any_top_p:
        x = jnp.where(_top_k_top_p_mask(x, md, flags), x, -jnp.inf)
    return x


def row_gumbel_noise(seeds: jax.Array, gen_index: jax.Array, vocab_size: int) -> jax.Array:
    """seeds [R] uint32, gen_index [R] int32 -> [R, V] Gumbel(0, 1) noise, one key per row."""

    def one(seed, index):
        key = jax.random.fold_in(jax.random.key(seed), index)
        return jax.random.gumbel(key, (vocab_size,), jnp.float32)

    return jax.vmap(one)(seeds, gen_index)


def compute_logprobs(logits: jax.Array, token_ids: jax.Array, num_logprobs: int) -> LogprobsOutput:
    """Raw log-softmax of logits [N, V] at token_ids [N] (column 0) and the top num_logprobs."""
    N, V = logits.shape
    if not 0 <= num_logprobs <= V:
        raise ValueError(f"num_logprobs must be in [0, vocab_size={V}], got {num_logprobs}.")
    logits = logits.astype(jnp.float32)
    token_ids = jnp.clip(token_ids.astype(jnp.int32), 0, V - 1)[:, None]  # [N, 1]
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)  # [N, 1]
    token_logit = jnp.take_along_axis(logits, token_ids, axis=-1)  # [N, 1]
    ranks = jnp.sum(logits >= token_logit, axis=-1).astype(jnp.int32)  # [N]
    logprobs = token_logit - lse
    ids = token_ids
    if num_logprobs > 0:
        top_logits, top_ids = jax.lax.top_k(logits, num_logprobs)  # [N, K]
        logprobs = jnp.concatenate([logprobs, top_logits - lse], axis=-1)
        ids = jnp.concatenate([ids, top_ids.astype(jnp.int32)], axis=-1)
    return LogprobsOutput(logprobs, ids, ranks)


def sample(logits: jax.Array, md: SamplingMetadata, flags: SamplerFlags) -> SamplerOutput:
    """logits [R, V] float32 -> SamplerOutput. `flags` must be static under jit."""
    R, V = logits.shape
    # a grammar's forbidden tokens are gone before anything else (logprobs included), as in vLLM
    logits = apply_token_bitmask(logits.astype(jnp.float32), md, flags)
    processed = apply_penalties(apply_logit_bias_and_bans(logits, md, flags), md, flags)
    greedy_ids = jnp.argmax(processed, axis=-1).astype(jnp.int32)  # [R]
    if flags.all_greedy:
        token_ids = greedy_ids
    else:
        x = apply_temperature_and_truncation(processed, md, flags)
        noise = row_gumbel_noise(md.seeds, md.gen_index, V)  # [R, V]
        sampled = jnp.argmax(x + noise, axis=-1).astype(jnp.int32)
        token_ids = jnp.where(md.temperature < _SAMPLING_EPS, greedy_ids, sampled)
    lp = compute_logprobs(logits, token_ids, flags.num_logprobs)
    return SamplerOutput(token_ids, lp.logprobs, lp.logprob_token_ids, lp.token_ranks)
