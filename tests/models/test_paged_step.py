"""The paged step driven by hand (chunked prefill, then decode) gives HF's greedy tokens."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxllm.models.batch import StepBatch, make_kv_cache  # noqa: E402
from jaxllm.models.step import make_step  # noqa: E402

BLOCK = 16
NEW_TOKENS = 32


class _Seq:
    def __init__(self, ids: list[int], first_block: int, max_len: int):
        self.ids = list(ids)
        self.computed = 0
        n_blocks = -(-max_len // BLOCK)
        self.table = np.arange(first_block, first_block + n_blocks, dtype=np.int32)


def _batch(seqs: list[_Seq], counts: list[int], P: int) -> StepBatch:
    tok, pos, slot, qsl, kv, last = [], [], [], [0], [], []
    for s, n in zip(seqs, counts):
        p = np.arange(s.computed, s.computed + n)
        tok += s.ids[s.computed : s.computed + n]
        pos += p.tolist()
        slot += (s.table[p // BLOCK] * BLOCK + p % BLOCK).tolist()
        qsl.append(qsl[-1] + n)
        kv.append(s.computed + n)
        last.append(qsl[-1] - 1)
    T = len(tok) + 3  # padding rows must be ignored
    pad = T - len(tok)
    tables = np.zeros((len(seqs) + 1, P), np.int32)  # one padding sequence too
    for i, s in enumerate(seqs):
        tables[i, : len(s.table)] = s.table
    return StepBatch(
        token_ids=jnp.asarray(tok + [0] * pad, jnp.int32),
        positions=jnp.asarray(pos + [0] * pad, jnp.int32),
        slot_mapping=jnp.asarray(slot + [-1] * pad, jnp.int32),
        block_tables=jnp.asarray(tables),
        kv_lens=jnp.asarray(kv + [0], jnp.int32),
        query_start_loc=jnp.asarray(qsl + [qsl[-1]], jnp.int32),
        logits_indices=jnp.asarray(last + [0], jnp.int32),
    )


def test_chunked_prefill_then_decode_matches_hf_generate(smollm2, smollm2_hf):
    tok = smollm2.tokenizer
    prompts = [
        "The quick brown fox",
        "Once upon a time, in a small village by the sea, there lived",
        "The history of the Roman Empire begins with the founding of the city of Rome, which "
        "according to legend took place in 753 BC. Over the following centuries",
    ]
    ids = [tok.encode(p) for p in prompts]
    max_len = max(len(i) for i in ids) + NEW_TOKENS
    seqs, next_block = [], 1
    for i in ids:
        seqs.append(_Seq(i, next_block, max_len))
        next_block += len(seqs[-1].table)
    P = len(seqs[0].table)
    cache = make_kv_cache(smollm2.config, next_block + 2, BLOCK)
    step = make_step(smollm2.config, "reference")

    for chunk in (0, 1):
        if chunk == 0:  # both chunks non-empty; the first crosses a page boundary where it can
            counts = [min(len(s.ids) // 2 + 3, len(s.ids) - 1) for s in seqs]
        else:
            counts = [len(s.ids) - s.computed for s in seqs]
        cache, logits = step(smollm2.params, cache, _batch(seqs, counts, P))
        for s, n in zip(seqs, counts):
            s.computed += n
    generated = [[] for _ in seqs]
    for _ in range(NEW_TOKENS):
        nxt = np.asarray(jnp.argmax(logits, axis=-1))
        for i, s in enumerate(seqs):
            s.ids.append(int(nxt[i]))
            generated[i].append(int(nxt[i]))
        cache, logits = step(smollm2.params, cache, _batch(seqs, [1] * len(seqs), P))
        for s in seqs:
            s.computed += 1

    for prompt_ids, got in zip(ids, generated):
        with torch.no_grad():
            ref = smollm2_hf.generate(
                torch.tensor([prompt_ids]),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
            )[0, len(prompt_ids) :].tolist()
        # HF stops at eos; up to there (eos included) the tokens must be identical
        assert len(ref) >= 8
        assert got[: len(ref)] == ref
