"""Speculative decoding through the engine: outputs equal the non-speculative ones (greedy, and
seeded sampling with penalties, logprobs and stop strings) on SmolLM2 with chunked prefill,
preemption and prefix caching; the sampled distribution with drafts is the target's (a
chi-square test on a tiny model, with a known-wrong sampler as the negative control)."""

import numpy as np
import pytest
from scipy.stats import chi2

from jaxllm import LLM, SamplingParams

CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n" * 2
PROMPTS = [
    "Repeat this code exactly:\n" + CODE,
    "The capital of France is",
    "Count: 1 2 3 4 5 6 7 8 9 10 1 2 3 4 5 6 7 8 9 10 1 2 3",
    "Repeat this code exactly:\n" + CODE + "\n# and once more",  # a prefix-cache hit
]
NEW = 16  # tokens per request
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}


# Both engines: a small token budget chunks the prompts, and 10 blocks of 16 cannot hold all the
# requests at once (preemption). The same shapes for both, so the reference's compiled steps
# serve the speculative engine's steps without drafts (the persistent compilation cache).
ENGINE = dict(
    max_model_len=128,
    max_num_seqs=4,
    max_num_batched_tokens=32,
    num_gpu_blocks_override=10,
    seed=0,
)


def test_outputs_equal_non_speculative_with_chunks_preemption_and_prefix_hits():
    """Greedy rows and a seeded sampling row with penalties, logprobs and a stop string."""
    sampled = SamplingParams(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        seed=7,
        logprobs=2,
        frequency_penalty=0.3,
        min_tokens=4,
        max_tokens=NEW,
        stop=["return"],
    )
    sp = [
        SamplingParams(temperature=0.0, max_tokens=NEW),
        SamplingParams(temperature=0.0, max_tokens=NEW),
        SamplingParams(temperature=0.0, max_tokens=NEW, stop=["sub"]),
        sampled,  # the code prompt again, longer: a prefix-cache hit
    ]
    base = LLM("smollm2-135m", **ENGINE)
    ref = base.generate(PROMPTS, sp, use_tqdm=False)
    del base
    spec = LLM("smollm2-135m", speculative_config=NGRAM, **ENGINE)
    out = spec.generate(PROMPTS, sp, use_tqdm=False)
    for r, o in zip(ref, out, strict=True):
        a, b = r.outputs[0], o.outputs[0]
        assert (b.token_ids, b.text, b.finish_reason, b.stop_reason) == (
            a.token_ids,
            a.text,
            a.finish_reason,
            a.stop_reason,
        )
        if a.logprobs is not None:
            assert len(b.logprobs) == len(a.logprobs)
            for x, y in zip(a.logprobs, b.logprobs):
                assert x.keys() == y.keys()
                for t in x:
                    assert y[t].logprob == pytest.approx(x[t].logprob, abs=1e-4)
    assert out[3].outputs[0].stop_reason == "return"  # the stop string ended it
    eng = spec.llm_engine
    assert eng.scheduler.num_preemptions_total > 0
    assert max(o.num_cached_tokens for o in out) > 0
    stats = eng.spec_stats
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    m = out[0].metrics  # the code prompt: its drafts mostly match
    assert m.spec_num_accepted_tokens > m.spec_num_draft_tokens / 2
    assert sum(m.spec_accepted_per_position) == m.spec_num_accepted_tokens
    del spec


def test_async_scheduling_and_bad_configs_are_refused():
    with pytest.raises(ValueError, match="async scheduling"):
        LLM("dummy:tiny", max_model_len=64, async_scheduling=True, speculative_config=NGRAM)
    with pytest.raises(ValueError, match="not supported"):
        LLM(
            "dummy:tiny",
            max_model_len=64,
            speculative_config={"method": "eagle3", "model": "x", "num_speculative_tokens": 2},
        )


class FixedProposer:
    """Drafts one token after the first output token: the most likely one (so it is accepted
    about as often as the target picks it)."""

    num_lookahead_tokens = 0

    def __init__(self, prompt_len, table):
        self.prompt_len, self.table = prompt_len, table

    def propose(self, sched, requests):
        out = {}
        for r, _room in requests:
            if r.num_output_tokens == 1:
                out[r.request_id] = [self.table[r.output_token_ids[0]]]
        return out

    def apply_block_ops(self, sched):
        pass


def _top4(llm, prompt):
    """{token: probability} of top-k 4 sampling at temperature 1 after `prompt`."""
    o = llm.generate(
        {"prompt_token_ids": prompt},
        SamplingParams(temperature=0.0, max_tokens=1, logprobs=4),
        use_tqdm=False,
    )[0]
    lps = {t: lp.logprob for t, lp in o.outputs[0].logprobs[0].items() if lp.rank <= 4}
    w = {t: np.exp(v) for t, v in lps.items()}
    total = sum(w.values())
    return {t: v / total for t, v in w.items()}


def test_sampled_distribution_with_drafts_is_the_targets():
    prompt = [5, 17, 42, 7, 99]
    n = 1500
    # every request in one batch (its prefill in one step): few step shapes to compile
    llm = LLM(
        "dummy:tiny",
        max_model_len=16,
        max_num_seqs=n,
        max_num_batched_tokens=n * len(prompt),
        seed=0,
        speculative_config=NGRAM,
    )
    # the exact joint distribution of the first three tokens under top-k 4, temperature 1
    p1 = _top4(llm, prompt)
    p2 = {t1: _top4(llm, prompt + [t1]) for t1 in p1}
    p3 = {(t1, t2): _top4(llm, prompt + [t1, t2]) for t1 in p1 for t2 in p2[t1]}
    draft = {t1: max(p2[t1], key=p2[t1].get) for t1 in p1}
    llm.llm_engine.proposer = FixedProposer(len(prompt), draft)
    params = [SamplingParams(temperature=1.0, top_k=4, max_tokens=3, seed=s) for s in range(n)]
    outs = llm.generate([{"prompt_token_ids": prompt}] * n, params, use_tqdm=False)
    samples = [tuple(o.outputs[0].token_ids) for o in outs]
    stats = llm.llm_engine.spec_stats
    # draft verified for every request: accepted for some, rejected for others
    assert stats.num_draft_tokens == n
    assert 0.1 * n < stats.num_accepted_tokens < 0.9 * n

    cells = [(t1, t2, t3) for t1 in p1 for t2 in p2[t1] for t3 in p3[(t1, t2)]]
    counts = np.array([sum(s == c for s in samples) for c in cells])
    assert counts.sum() == n  # top-k 4 everywhere: no sample outside the support

    def p_value(prob2):
        expected = np.array([p1[a] * prob2[a][b] * p3[(a, b)][c] for a, b, c in cells]) * n
        stat = ((counts - expected) ** 2 / expected).sum()
        return chi2.sf(stat, len(cells) - 1)

    assert p_value(p2) > 1e-4
    # the classic bug (a rejected draft resampled from p itself instead of p without the
    # draft) moves the draft's probability from p(x) to p(x)(2 - p(x)): the test must see it
    biased = {}
    for t1, dist in p2.items():
        x = draft[t1]
        biased[t1] = {t: q * (1 - dist[x]) + (dist[x] if t == x else 0) for t, q in dist.items()}
    assert p_value(biased) < 1e-8
    del llm
