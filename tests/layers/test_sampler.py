"""On-device sampler vs numpy / HF transformers / torch references, and the metadata builder."""

import jax
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from jaxllm.layers.sampler import (
    apply_logit_bias_and_bans,
    apply_penalties,
    apply_temperature_and_truncation,
    compute_logprobs,
    sample,
)
from jaxllm.sampling_metadata import (
    SamplerFlags,
    SamplingRow,
    build_sampling_metadata,
    min_tokens_banned_ids,
    seed_to_uint32,
)
from jaxllm.sampling_params import SamplingParams

_sample = jax.jit(sample, static_argnames=("flags",))
_penalties = jax.jit(
    lambda x, md, flags: apply_penalties(apply_logit_bias_and_bans(x, md, flags), md, flags),
    static_argnames=("flags",),
)


def run(logits, rows, pad_rows_to=None):
    md, flags = build_sampling_metadata(rows, vocab_size=logits.shape[1], pad_rows_to=pad_rows_to)
    if pad_rows_to is not None and pad_rows_to > logits.shape[0]:
        logits = np.concatenate(
            [logits, np.zeros((pad_rows_to - logits.shape[0], logits.shape[1]), np.float32)]
        )
    out = _sample(logits, md, flags)
    return jax.tree.map(np.asarray, out), flags


def rand_logits(rng, r, v, scale=3.0):
    return (rng.standard_normal((r, v)) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- numpy references


def np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def np_truncated_probs(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """Renormalized distribution after temperature, min-p, top-k, top-p (float64)."""
    x = logits.astype(np.float64) / temperature
    p = np_softmax(x)
    keep = np.ones_like(p, bool)
    if min_p > 0:
        keep &= p >= min_p * p.max()
    if top_k > 0:
        kk = np.zeros_like(keep)
        kk[np.argsort(-x)[:top_k]] = True
        keep &= kk
    if top_p < 1.0:
        q = np.where(keep, p, 0.0)
        q /= q.sum()
        order = np.argsort(-q)
        mass_before = np.concatenate([[0.0], np.cumsum(q[order])[:-1]])
        n = max(int(np.sum(mass_before < top_p)), 1)
        kp = np.zeros_like(keep)
        kp[order[:n]] = True
        keep &= kp
    q = np.where(keep, p, 0.0)
    return q / q.sum()


def np_penalties(logits, prompt, output, rep=1.0, freq=0.0, pres=0.0):
    x = logits.astype(np.float32).copy()
    seen = np.zeros(x.shape, bool)
    seen[list(prompt) + list(output)] = True
    x = np.where(seen, np.where(x < 0, x * np.float32(rep), x / np.float32(rep)), x).astype(
        np.float32
    )
    counts = np.bincount(np.asarray(output, np.int64), minlength=x.shape[0]).astype(np.float32)
    x = x - np.float32(freq) * counts
    x = x - np.float32(pres) * (counts > 0).astype(np.float32)
    return x


# ----------------------------------------------------------------------------- greedy


def test_greedy_equals_argmax_exactly():
    rng = np.random.default_rng(0)
    logits = rand_logits(rng, 8, 64)
    logits[3, [5, 40]] = logits[3].max() + 1.0  # tie: first index wins, as np.argmax
    rows = [SamplingRow(SamplingParams(temperature=0.0), seed=i) for i in range(8)]
    out, flags = run(logits, rows)
    assert flags.all_greedy
    np.testing.assert_array_equal(out.token_ids, np.argmax(logits, -1))
    # Greedy rows inside a mixed batch take the same exact argmax.
    mixed = [
        SamplingRow(SamplingParams(temperature=0.0 if i % 2 else 0.9, top_k=5), seed=i)
        for i in range(8)
    ]
    out2, flags2 = run(logits, mixed)
    assert not flags2.all_greedy and flags2.any_top_k_top_p
    np.testing.assert_array_equal(out2.token_ids[1::2], np.argmax(logits, -1)[1::2])


# ------------------------------------------------------------------------ truncation + distribution


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=1.0),
        dict(temperature=0.7, top_k=3),
        dict(temperature=1.3, top_p=0.6),
        dict(temperature=0.8, min_p=0.1),
        dict(temperature=1.0, top_k=6, top_p=0.8, min_p=0.05),
    ],
    ids=["plain", "top_k", "top_p", "min_p", "all"],
)
def test_truncation_allowed_set_and_distribution(kw):
    rng = np.random.default_rng(1)
    V, distinct, draws = 16, 4, 2048
    base = rand_logits(rng, distinct, V, scale=1.5)
    logits = np.repeat(base, draws, axis=0)  # [distinct * draws, V]
    params = SamplingParams(**kw)
    rows = [SamplingRow(params, seed=1000 + i) for i in range(logits.shape[0])]
    out, _ = run(logits, rows)
    tokens = out.token_ids.reshape(distinct, draws)
    for d in range(distinct):
        ref = np_truncated_probs(
            base[d],
            kw["temperature"],
            kw.get("top_k", 0),
            kw.get("top_p", 1.0),
            kw.get("min_p", 0.0),
        )
        assert np.all(ref[tokens[d]] > 0), "sampled a token outside the allowed set"
        freq = np.bincount(tokens[d], minlength=V) / draws
        tol = 5 * np.sqrt(ref * (1 - ref) / draws) + 2e-3
        assert np.all(np.abs(freq - ref) <= tol), (freq, ref)


def test_kept_set_equals_numpy_per_row_settings():
    """Each row its own temperature/top-k/top-p/min-p: the finite entries equal numpy's set."""
    rng = np.random.default_rng(8)
    R, V = 48, 300
    logits = rand_logits(rng, R, V, scale=2.0)
    params = [
        SamplingParams(
            temperature=float(rng.uniform(0.3, 1.5)),
            top_k=int(rng.choice([0, 1, 5, 40, 299])),
            top_p=float(rng.choice([1.0, 0.95, 0.5, 0.1])),
            min_p=float(rng.choice([0.0, 0.01, 0.2])),
        )
        for _ in range(R)
    ]
    md, flags = build_sampling_metadata([SamplingRow(p, seed=0) for p in params], vocab_size=V)
    x = np.asarray(
        jax.jit(apply_temperature_and_truncation, static_argnames=("flags",))(logits, md, flags)
    )
    for i, p in enumerate(params):
        ref = np_truncated_probs(logits[i], p.temperature, p.top_k, p.top_p, p.min_p)
        np.testing.assert_array_equal(np.isfinite(x[i]), ref > 0, err_msg=f"row {i}: {p}")
        np.testing.assert_allclose(
            x[i][ref > 0], logits[i][ref > 0] / np.float32(p.temperature), rtol=1e-6
        )


def test_top_p_always_keeps_one_token():
    logits = np.array([[10.0, 0.0, -1.0, -2.0]] * 64, np.float32)
    rows = [SamplingRow(SamplingParams(top_p=1e-6), seed=i) for i in range(64)]
    out, _ = run(logits, rows)
    np.testing.assert_array_equal(out.token_ids, 0)


# ----------------------------------------------------------------------------- penalties


def test_repetition_penalty_equals_hf():
    rng = np.random.default_rng(2)
    V = 64
    logits = rand_logits(rng, 4, V)
    penalties = [1.3, 0.7, 1.0, 2.0]
    prompts = [rng.integers(0, V, 12).tolist() for _ in range(4)]
    outputs = [rng.integers(0, V, n).tolist() for n in (5, 0, 9, 3)]
    rows = [
        SamplingRow(
            SamplingParams(temperature=0.0, repetition_penalty=p),
            seed=0,
            prompt_token_ids=pr,
            output_token_ids=o,
        )
        for p, pr, o in zip(penalties, prompts, outputs)
    ]
    md, flags = build_sampling_metadata(rows, vocab_size=V)
    got = np.asarray(_penalties(logits, md, flags))
    for i in range(4):
        hf = RepetitionPenaltyLogitsProcessor(penalties[i])(
            torch.tensor([prompts[i] + outputs[i]]), torch.tensor(logits[i : i + 1])
        )
        # XLA rewrites x / broadcast(p) as x * (1/p): at most 1 ulp from torch's correctly rounded
        # divide.
        np.testing.assert_array_max_ulp(got[i], hf[0].numpy(), maxulp=1)
    out, _ = run(logits, rows)
    np.testing.assert_array_equal(out.token_ids, np.argmax(got, -1))


def test_presence_frequency_and_repetition_equal_numpy():
    rng = np.random.default_rng(3)
    V = 48
    logits = rand_logits(rng, 5, V)
    cfg = [(1.0, 0.5, 0.0), (1.0, 0.0, 1.5), (1.0, -0.7, 0.3), (1.2, 2.0, -2.0), (1.0, 0.0, 0.0)]
    prompts = [rng.integers(0, V, 7).tolist() for _ in cfg]
    outputs = [rng.integers(0, 8, 20).tolist() for _ in cfg]  # small id range: repeats
    rows = [
        SamplingRow(
            SamplingParams(repetition_penalty=r, frequency_penalty=f, presence_penalty=p),
            seed=0,
            prompt_token_ids=pr,
            output_token_ids=o,
        )
        for (r, f, p), pr, o in zip(cfg, prompts, outputs)
    ]
    md, flags = build_sampling_metadata(rows, vocab_size=V)
    got = np.asarray(_penalties(logits, md, flags))
    for i, (r, f, p) in enumerate(cfg):
        ref = np_penalties(logits[i], prompts[i], outputs[i], r, f, p)
        np.testing.assert_allclose(got[i], ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[4], logits[4])  # neutral row untouched


def test_logit_bias_and_bans():
    rng = np.random.default_rng(4)
    V = 32
    logits = rand_logits(rng, 3, V)
    rows = [
        SamplingRow(SamplingParams(temperature=0.0, logit_bias={"7": 100.0, 3: -5.5}), seed=0),
        SamplingRow(
            SamplingParams(temperature=0.0), seed=0, banned_token_ids=[int(np.argmax(logits[1])), 0]
        ),
        SamplingRow(
            SamplingParams(temperature=0.0, logit_bias={2: 1.0}), seed=0, banned_token_ids=[2]
        ),
    ]
    md, flags = build_sampling_metadata(rows, vocab_size=V)
    got = np.asarray(_penalties(logits, md, flags))
    ref = logits.copy()
    ref[0, 7] += 100.0
    ref[0, 3] += np.float32(-5.5)
    ref[1, [int(np.argmax(logits[1])), 0]] = -np.inf
    ref[2, 2] = -np.inf
    np.testing.assert_array_equal(got, ref)
    out, _ = run(logits, rows)
    assert out.token_ids[0] == 7
    np.testing.assert_array_equal(out.token_ids, np.argmax(ref, -1))


def test_min_tokens_bans_eos_and_stop_ids():
    V, eos, stop = 20, 1, 5
    params = SamplingParams(min_tokens=3, stop_token_ids=[stop], temperature=1.0)
    params.update_from_generation_config({}, eos_token_id=eos)
    logits = np.zeros((256, V), np.float32)
    logits[:, [eos, stop]] = 8.0  # overwhelmingly likely unless banned
    for n_out, banned in ((0, True), (2, True), (3, False)):
        output = [9] * n_out
        rows = [
            SamplingRow(
                params,
                seed=i,
                output_token_ids=output,
                banned_token_ids=min_tokens_banned_ids(params, n_out),
            )
            for i in range(256)
        ]
        out, _ = run(logits, rows)
        hit = np.isin(out.token_ids, [eos, stop])
        assert (not hit.any()) if banned else hit.mean() > 0.9


# ----------------------------------------------------------------------------- seeds


def test_seeded_row_is_batch_invariant():
    rng = np.random.default_rng(5)
    V, steps = 1000, 6
    target = SamplingParams(temperature=0.9, seed=1234)
    others = [
        SamplingParams(temperature=0.5, top_k=20),
        SamplingParams(temperature=0.0),
        SamplingParams(
            top_p=0.7,
            min_p=0.02,
            repetition_penalty=1.2,
            frequency_penalty=0.4,
            logit_bias={3: 2.0},
            logprobs=5,
        ),
        SamplingParams(seed=99),
    ]
    step_logits = [rand_logits(rng, 1, V, 2.0)[0] for _ in range(steps)]

    def generate(position, batch_size, pad_to):
        output, tokens = [], []
        for t in range(steps):
            rows, logits = [], rand_logits(rng, batch_size, V)  # other rows change every step
            for i in range(batch_size):
                if i == position:
                    rows.append(
                        SamplingRow(
                            target,
                            seed=target.seed,
                            prompt_token_ids=[1, 2, 3],
                            output_token_ids=list(output),
                        )
                    )
                    logits[i] = step_logits[t]
                else:
                    rows.append(
                        SamplingRow(
                            others[i % len(others)],
                            seed=int(rng.integers(1 << 31)),
                            prompt_token_ids=[4, 5],
                            output_token_ids=[7] * (i + t),
                        )
                    )
            out, _ = run(logits, rows, pad_to)
            tok = int(out.token_ids[position])
            output.append(tok)
            tokens.append(tok)
        return tokens

    alone = generate(0, 1, None)
    assert generate(2, 5, None) == alone
    assert generate(0, 7, 16) == alone
    assert generate(4, 5, 8) == alone
    assert len(set(alone)) > 1
    # A different seed gives a different stream on the same logits.
    other = SamplingParams(temperature=0.9)
    other_tokens = [
        int(
            run(step_logits[t][None], [SamplingRow(other, seed=4321, output_token_ids=[0] * t)])[
                0
            ].token_ids[0]
        )
        for t in range(steps)
    ]
    assert other_tokens != alone


# ----------------------------------------------------------------------------- logprobs


def test_logprobs_are_raw_log_softmax():
    rng = np.random.default_rng(6)
    R, V = 6, 50
    logits = rand_logits(rng, R, V)
    rows = [
        SamplingRow(
            SamplingParams(
                temperature=0.7, top_k=10, repetition_penalty=1.5, logprobs=3, logit_bias={0: 5.0}
            ),
            seed=i,
            prompt_token_ids=[1, 2],
            output_token_ids=[3],
        )
        for i in range(R)
    ]
    out, flags = run(logits, rows)
    assert flags.num_logprobs == 4
    ref = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1).numpy()
    assert out.logprobs.shape == (R, 5) and out.logprob_token_ids.shape == (R, 5)
    np.testing.assert_array_equal(out.logprob_token_ids[:, 0], out.token_ids)
    np.testing.assert_allclose(out.logprobs[:, 0], ref[np.arange(R), out.token_ids], atol=1e-5)
    np.testing.assert_array_equal(out.logprob_token_ids[:, 1:], np.argsort(-logits, -1)[:, :4])
    np.testing.assert_allclose(
        out.logprobs[:, 1:], np.take_along_axis(ref, out.logprob_token_ids[:, 1:], -1), atol=1e-5
    )
    ranks = 1 + np.sum(ref > ref[np.arange(R), out.token_ids][:, None], -1)
    np.testing.assert_array_equal(out.token_ranks, ranks)


def test_compute_logprobs_k0_and_errors():
    rng = np.random.default_rng(7)
    logits = rand_logits(rng, 5, 30)
    ids = rng.integers(0, 30, 5)
    lp = jax.jit(compute_logprobs, static_argnums=2)(logits, ids, 0)
    ref = torch.log_softmax(torch.tensor(logits), -1).numpy()
    assert lp.logprobs.shape == (5, 1)
    np.testing.assert_allclose(np.asarray(lp.logprobs[:, 0]), ref[np.arange(5), ids], atol=1e-5)
    with pytest.raises(ValueError, match="num_logprobs"):
        compute_logprobs(logits, ids, 31)


# ----------------------------------------------------------------------------- builder


def test_builder_pads_as_documented():
    V = 100
    rows = [
        SamplingRow(
            SamplingParams(temperature=0.0),
            seed=5,
            prompt_token_ids=[1] * 40,
            output_token_ids=[2] * 3,
        ),
        SamplingRow(
            SamplingParams(top_k=500, frequency_penalty=0.5, logprobs=5),
            seed=2**40 + 7,
            prompt_token_ids=[3] * 20,
            output_token_ids=[4] * 17,
            banned_token_ids=[9, 8],
        ),
        SamplingRow(
            SamplingParams(top_k=7, logit_bias={"11": 1.0}, logprobs=-1),
            seed=3,
            output_token_ids=[5] * 2,
        ),
    ]
    md, flags = build_sampling_metadata(rows, vocab_size=V, pad_rows_to=8)
    assert all(a.shape[0] == 8 for a in md)
    assert md.logit_bias_ids.shape == (8, 8) and md.banned_ids.shape == (8, 8)
    assert md.output_token_ids.shape == (8, 32)  # only row 1 uses penalties; 17 -> 32
    assert md.prompt_token_ids.shape == (8, 0)  # no repetition penalty anywhere
    np.testing.assert_array_equal(md.output_token_ids[1], [4] * 17 + [-1] * 15)
    np.testing.assert_array_equal(md.output_token_ids[[0, 2, 3]], -1)
    np.testing.assert_array_equal(md.banned_ids[1], [9, 8] + [-1] * 6)
    np.testing.assert_array_equal(md.logit_bias_ids[2], [11] + [-1] * 7)
    np.testing.assert_array_equal(md.top_k[:3], [0, 0, 7])  # 0 = off; k >= V stored as off
    np.testing.assert_array_equal(md.gen_index[:3], [3, 17, 2])
    np.testing.assert_array_equal(md.seeds[:3], [5, seed_to_uint32(2**40 + 7), 3])
    assert md.seeds.dtype == np.uint32 and md.gen_index.dtype == np.int32
    # padding rows: greedy, neutral
    np.testing.assert_array_equal(md.temperature[3:], 0.0)
    np.testing.assert_array_equal(md.top_p[3:], 1.0)
    np.testing.assert_array_equal(md.repetition_penalty[3:], 1.0)
    assert flags == SamplerFlags(
        all_greedy=False,
        any_top_k=True,
        any_top_p=False,
        any_min_p=False,
        any_penalties=True,
        any_logit_bias=True,
        num_logprobs=V,
    )  # logprobs=-1 -> V
    hash(flags)

    rep = [SamplingRow(SamplingParams(repetition_penalty=1.1), seed=0, prompt_token_ids=[1] * 20)]
    md2, flags2 = build_sampling_metadata(rep, vocab_size=V)
    assert md2.prompt_token_ids.shape == (1, 32) and md2.output_token_ids.shape == (1, 16)
    assert md2.logit_bias_ids.shape == (1, 0) and md2.banned_ids.shape == (1, 0)
    assert flags2.num_logprobs == 0 and not flags2.any_top_k_top_p


@pytest.mark.parametrize(
    "rows, pad, match",
    [
        ([SamplingRow(SamplingParams(), seed=0)] * 3, 2, "pad_rows_to"),
        ([SamplingRow(SamplingParams(), seed=0, banned_token_ids=[100])], None, "banned_token_ids"),
        ([SamplingRow(SamplingParams(logit_bias={100: 1.0}), seed=0)], None, "logit_bias"),
        (
            [SamplingRow(SamplingParams(presence_penalty=1.0), seed=0, output_token_ids=[-3])],
            None,
            "output_token_ids",
        ),
    ],
)
def test_builder_rejects_bad_input(rows, pad, match):
    with pytest.raises(ValueError, match=match):
        build_sampling_metadata(rows, vocab_size=100, pad_rows_to=pad)


def test_token_bitmask_masks_exactly_the_cleared_bits():
    """Structured outputs: a row's packed int32 bitmask (bit v % 32 of word v // 32) keeps exactly
    its set tokens; a row without a grammar keeps all; logprobs see the mask (as vLLM's)."""
    import numpy as np

    from jaxllm.layers.sampler import sample
    from jaxllm.sampling_metadata import SamplingRow, build_sampling_metadata
    from jaxllm.sampling_params import SamplingParams

    V = 70  # three words, the last partly past the vocabulary
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, V)).astype(np.float32)
    allowed = [3, 31, 32, 64, 69]
    bits = np.zeros(V, bool)
    bits[allowed] = True
    mask = np.packbits(np.pad(bits, (0, 96 - V)), bitorder="little").view(np.int32)
    rows = [
        SamplingRow(SamplingParams(temperature=0.0, logprobs=2), 0, allowed_bitmask=mask),
        SamplingRow(SamplingParams(temperature=0.0, logprobs=2), 0),
    ]
    md, flags = build_sampling_metadata(rows, vocab_size=V)
    assert flags.any_structured and md.allowed_bitmask.shape == (2, 3)
    out = sample(jax.numpy.asarray(logits), md, flags)
    assert int(out.token_ids[0]) == allowed[int(np.argmax(logits[0, allowed]))]
    assert int(out.token_ids[1]) == int(np.argmax(logits[1]))
    assert set(np.asarray(out.logprob_token_ids[0, 1:]).tolist()) <= set(allowed)
    md0, flags0 = build_sampling_metadata(rows[1:], vocab_size=V)
    assert not flags0.any_structured and md0.allowed_bitmask.shape == (1, 0)
