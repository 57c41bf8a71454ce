"""LLM on SmolLM2: batch invariance, seeded sampling, logprobs against HF, bad input."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxllm import LLM, SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def llm(smollm2):
    return LLM(
        smollm2, max_model_len=256, max_num_seqs=8, max_num_batched_tokens=128, max_logprobs=5
    )


def _others(tok):
    return [
        "Once upon a time",
        "The recipe needs flour, sugar, eggs and",
        "In mathematics, a prime number is",
        "def add(a, b):",
        "Paris is the capital of",
    ]


def test_same_prompt_same_greedy_tokens_alone_and_in_batch(llm):
    p = "The three primary colours are"
    sp = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = llm.generate(p, sp, use_tqdm=False)[0].outputs[0].token_ids
    batch = llm.generate(
        _others(llm.tokenizer)[:2] + [p] + _others(llm.tokenizer)[2:], sp, use_tqdm=False
    )
    assert batch[2].outputs[0].token_ids == alone


def test_seeded_sampling_is_batch_invariant(llm):
    p = "My favourite animal is"
    sp = SamplingParams(
        temperature=0.9, top_p=0.9, top_k=50, max_tokens=12, seed=1234, ignore_eos=True
    )
    alone = llm.generate(p, sp, use_tqdm=False)[0].outputs[0].token_ids
    noise = SamplingParams(temperature=1.0, max_tokens=12)
    prompts = _others(llm.tokenizer) + [p]
    params = [noise] * 5 + [sp]
    batch = llm.generate(prompts, params, use_tqdm=False)
    assert batch[-1].outputs[0].token_ids == alone
    again = llm.generate(p, sp, use_tqdm=False)[0].outputs[0].token_ids
    assert again == alone
    other_seed = SamplingParams(
        temperature=0.9, top_p=0.9, top_k=50, max_tokens=12, seed=99, ignore_eos=True
    )
    assert llm.generate(p, other_seed, use_tqdm=False)[0].outputs[0].token_ids != alone


def test_n_samples_share_the_prompt_and_differ(llm):
    sp = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=7, ignore_eos=True)
    out = llm.generate("My favourite food is", sp, use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def test_logprobs_match_hf_log_softmax(llm, smollm2_hf):
    p = "The capital of France is"
    sp = SamplingParams(
        temperature=0.8, max_tokens=8, seed=3, logprobs=5, prompt_logprobs=3, ignore_eos=True
    )
    out = llm.generate(p, sp, use_tqdm=False)[0]
    comp = out.outputs[0]
    ids = out.prompt_token_ids + comp.token_ids
    with torch.no_grad():
        logits = smollm2_hf(torch.tensor([ids])).logits[0]
    ref = torch.log_softmax(logits.double(), dim=-1).numpy()
    n_prompt = len(out.prompt_token_ids)
    cum = 0.0
    for j, (t, lp) in enumerate(zip(comp.token_ids, comp.logprobs)):
        row = ref[n_prompt - 1 + j]
        assert abs(lp[t].logprob - row[t]) < 1e-4
        top = np.argsort(-row)[:5]
        assert set(top.tolist()) <= set(lp)
        for k in top:
            assert abs(lp[int(k)].logprob - row[k]) < 1e-4
        assert lp[t].rank == int((row > row[t]).sum()) + 1
        cum += lp[t].logprob
    assert abs(comp.cumulative_logprob - cum) < 1e-6
    # prompt logprobs: None for the first token, then the distribution of each next prompt token
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == n_prompt
    for j in range(1, n_prompt):
        t = out.prompt_token_ids[j]
        assert abs(out.prompt_logprobs[j][t].logprob - ref[j - 1][t]) < 1e-4


@pytest.mark.parametrize(
    "prompt, kwargs, message",
    [
        ("x " * 300, dict(), "max_model_len"),
        ("", dict(), "empty"),
        ([], dict(), "no prompts"),
        ({"prompt_token_ids": []}, dict(), "empty"),
        ([1, 2, 49152], dict(), "vocabulary"),
        ([1, 2, -1], dict(), "vocabulary"),
        ("hello", dict(logprobs=6), "max_logprobs"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_engine_goes_on(llm, prompt, kwargs, message):
    with pytest.raises(ValueError, match=message):
        llm.generate(prompt, SamplingParams(max_tokens=4, **kwargs), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    out = llm.generate("Hello", SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) >= 1


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(n=0), "n"),
        (dict(max_tokens=0), "max_tokens"),
    ],
)
def test_bad_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_bad_prompt_in_a_batch_queues_nothing_and_others_go_on(llm):
    engine = llm.llm_engine
    engine.add_request(
        "keep", "A request that is already running", SamplingParams(max_tokens=6, temperature=0.0)
    )
    engine.step()
    with pytest.raises(ValueError):
        llm.generate(["fine prompt", ""], SamplingParams(max_tokens=4), use_tqdm=False)
    outs = []
    while engine.has_unfinished_requests():
        outs += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in outs] == ["keep"]
    assert len(outs[0].outputs[0].token_ids) >= 1


def test_stop_strings_and_stop_token_ids(llm):
    sp = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    base = llm.generate("Count: 1, 2, 3,", sp, use_tqdm=False)[0].outputs[0]
    assert len(base.text) > 6
    stop = base.text[4:6]
    out = llm.generate(
        "Count: 1, 2, 3,",
        SamplingParams(temperature=0.0, max_tokens=30, stop=[stop], ignore_eos=True),
        use_tqdm=False,
    )[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == base.text[: base.text.index(stop)]
    tid = base.token_ids[3]
    out = llm.generate(
        "Count: 1, 2, 3,",
        SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[tid], ignore_eos=True),
        use_tqdm=False,
    )[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == tid
    assert out.token_ids == base.token_ids[: base.token_ids.index(tid) + 1]


def test_generation_config_gives_the_default_sampling_params(llm, smollm2):
    """generation_config="auto": the model's recommended settings are the defaults of
    `get_default_sampling_params()` and of `generate` without sampling params (vLLM's
    `--generation-config auto`); "vllm" ignores them."""
    import dataclasses

    recommended = {"temperature": 0.0, "top_k": 20, "max_new_tokens": 5, "repetition_penalty": 1}
    loaded = dataclasses.replace(
        smollm2, generation_config={**smollm2.generation_config, **recommended}
    )
    tuned = LLM(loaded, max_model_len=256, max_num_seqs=8, num_gpu_blocks_override=32)
    sp = tuned.get_default_sampling_params()
    assert (sp.temperature, sp.max_tokens, sp.repetition_penalty) == (0.0, 5, 1)
    (out,) = tuned.generate("The capital of France is", use_tqdm=False)
    greedy = SamplingParams(temperature=0.0, max_tokens=5)
    want = llm.generate("The capital of France is", greedy, use_tqdm=False)[0].outputs[0]
    assert out.outputs[0].token_ids == want.token_ids
    plain = LLM(loaded, max_model_len=256, num_gpu_blocks_override=32, generation_config="vllm")
    assert plain.get_default_sampling_params().max_tokens == SamplingParams().max_tokens == 16
    assert plain.get_default_sampling_params().temperature == 1.0
    with pytest.raises(ValueError, match="generation_config must be 'auto'"):
        LLM(loaded, generation_config="model")


def test_min_tokens_holds_back_the_models_eos(llm):
    """Greedy chat output that ends in eos within a few tokens runs on to min_tokens, with eos
    banned until then (vLLM's min_tokens; HF's min_new_tokens)."""
    prompt = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Reply with the single word: yes"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    short = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=40), use_tqdm=False)
    short = short[0].outputs[0]
    eos = set(llm.llm_engine.eos_token_ids)
    assert short.finish_reason == "stop" and short.token_ids[-1] in eos
    n = len(short.token_ids) + 5
    out = llm.generate(
        prompt, SamplingParams(temperature=0.0, max_tokens=40, min_tokens=n), use_tqdm=False
    )[0].outputs[0]
    assert len(out.token_ids) >= n and not eos & set(out.token_ids[:n])
    assert out.token_ids[: len(short.token_ids) - 1] == short.token_ids[:-1]
