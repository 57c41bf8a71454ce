"""LLM.beam_search on SmolLM2: width 1 equals greedy generate, width 4 equals HF transformers'
`generate(num_beams=4, num_return_sequences=4)` (all four beams, in order, and their scores), the
beams reuse the prompt's KV blocks through the prefix cache, and bad parameters raise ValueError."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from jaxllm import LLM, BeamSearchParams, SamplingParams  # noqa: E402

BLOCK = 16
TEXTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "The best way to learn programming is",
]


@pytest.fixture(scope="module")
def llm(smollm2):
    return LLM(
        smollm2, max_model_len=256, max_num_seqs=16, max_num_batched_tokens=256, block_size=BLOCK
    )


@pytest.fixture(scope="module")
def chat_prompt(llm):
    """A chat prompt whose greedy answer ends with eos (<|im_end|>) well within 16 tokens."""
    return llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2? Answer with one number."}],
        tokenize=False,
        add_generation_prompt=True,
    )


def _hf_beams(hf, ids, k, max_new, length_penalty, early_stopping):
    """HF's k returned beams: [(generated token ids, sequence score)], best first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine, 2 torch threads run ~15x slower than 1
    try:
        with torch.no_grad():
            g = hf.generate(
                torch.tensor([ids]),
                max_new_tokens=max_new,
                num_beams=k,
                num_return_sequences=k,
                do_sample=False,
                length_penalty=length_penalty,
                early_stopping=early_stopping,
                return_dict_in_generate=True,
                output_scores=True,
            )
    finally:
        torch.set_num_threads(threads)
    out = []
    for r in range(k):
        n = int((g.beam_indices[r] >= 0).sum())  # this beam's generated length
        out.append((g.sequences[r, len(ids) : len(ids) + n].tolist(), float(g.sequences_scores[r])))
    return out


def test_width_1_equals_greedy_generate(llm, chat_prompt):
    prompts = [TEXTS[0], TEXTS[2], chat_prompt]
    greedy = llm.generate(
        prompts, SamplingParams(temperature=0.0, max_tokens=12, logprobs=0), use_tqdm=False
    )
    beams = llm.beam_search(prompts, BeamSearchParams(beam_width=1, max_tokens=12))
    eos = set(llm.llm_engine.eos_token_ids)
    assert greedy[-1].outputs[0].token_ids[-1] in eos  # the chat answer really ends with eos
    for g, b in zip(greedy, beams):
        (seq,) = b.sequences
        ref = g.outputs[0]
        assert seq.output_token_ids == ref.token_ids
        assert seq.tokens == g.prompt_token_ids + ref.token_ids
        assert seq.finish_reason == ref.finish_reason
        assert seq.text == ref.text
        assert seq.cum_logprob == pytest.approx(ref.cumulative_logprob, abs=1e-4)
        assert len(seq.logprobs) == len(ref.token_ids)
    # include_stop_str_in_output keeps the eos text; without it the text stops before eos
    a = beams[-1].sequences[0]
    params = BeamSearchParams(beam_width=1, max_tokens=12, include_stop_str_in_output=True)
    b = llm.beam_search(chat_prompt, params)[0].sequences[0]
    assert a.finish_reason == b.finish_reason == "stop"
    assert a.text == llm.tokenizer.decode(a.output_token_ids[:-1])
    assert b.text == a.text + llm.tokenizer.decode([a.output_token_ids[-1]])


@pytest.mark.parametrize(
    "length_penalty, early_stopping, max_new, which",
    [(1.0, False, 12, (0, 2)), (0.5, "never", 10, (2,)), (2.0, True, 10, (2,))],
    ids=["hf-defaults", "lp0.5-never", "lp2-true"],
)
def test_width_4_equals_hf_beam_search(
    llm, smollm2_hf, chat_prompt, length_penalty, early_stopping, max_new, which
):
    """Prompt 2 (chat) mixes beams that end in eos with beams cut at the length limit."""
    texts = [TEXTS[0], TEXTS[1], chat_prompt]
    prompts = [llm.tokenizer.encode(texts[i]) for i in which]
    params = BeamSearchParams(
        beam_width=4,
        max_tokens=max_new,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    outs = llm.beam_search(prompts, params)
    for ids, out in zip(prompts, outs):
        ref = _hf_beams(smollm2_hf, ids, 4, max_new, length_penalty, early_stopping)
        got = [(s.output_token_ids, s.score) for s in out.sequences]
        assert [t for t, _ in got] == [t for t, _ in ref], (ids, got, ref)
        for (_, s), (_, s_ref) in zip(got, ref):
            assert s == pytest.approx(s_ref, abs=2e-3)
        assert out.prompt_token_ids == ids
        for seq in out.sequences:
            n = len(seq.output_token_ids)
            assert seq.score == pytest.approx(seq.cum_logprob / n**length_penalty)
            assert seq.cum_logprob == pytest.approx(
                sum(lp[t].logprob for lp, t in zip(seq.logprobs, seq.output_token_ids)), abs=1e-5
            )
            assert seq.finish_reason in ("stop", "length")
            assert (seq.finish_reason == "stop") == (
                seq.output_token_ids[-1] in llm.llm_engine.eos_token_ids
            )


def test_beams_share_prompt_blocks_through_the_prefix_cache(llm):
    text = (
        "The history of the city begins with a small settlement by the river, where farmers "
        "and traders met every season to exchange grain, tools and news. It grew into a"
    )
    ids = llm.tokenizer.encode(text)
    full = len(ids) // BLOCK * BLOCK
    assert full >= 2 * BLOCK
    max_new = 6
    out = llm.beam_search(
        {"prompt_token_ids": ids, "prompt": text},
        BeamSearchParams(beam_width=3, max_tokens=max_new, ignore_eos=True),
    )[0]
    assert out.prompt == text
    assert [len(s.output_token_ids) for s in out.sequences] == [max_new] * 3
    # every round after the first runs >= 3 beam requests, each finding the prompt's full blocks
    assert out.num_cached_tokens >= (max_new - 1) * 3 * full
    # and the engine is left clean: every block back in the free pool
    engine = llm.llm_engine
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.kv_cache_manager.num_free_blocks == engine.runner.num_blocks - 1


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(beam_width=0, max_tokens=8), "beam_width"),
        (dict(beam_width=2.0, max_tokens=8), "beam_width"),
        (dict(beam_width=True, max_tokens=8), "beam_width"),
        (dict(beam_width=2, max_tokens=0), "max_tokens"),
        (dict(beam_width=2, max_tokens=None), "max_tokens"),
        (dict(beam_width=2, max_tokens=8, temperature=-0.5), "temperature"),
        (dict(beam_width=2, max_tokens=8, temperature=float("nan")), "temperature"),
        (dict(beam_width=2, max_tokens=8, length_penalty=float("inf")), "length_penalty"),
        (dict(beam_width=2, max_tokens=8, length_penalty="1"), "length_penalty"),
        (dict(beam_width=2, max_tokens=8, ignore_eos=1), "ignore_eos"),
        (
            dict(beam_width=2, max_tokens=8, include_stop_str_in_output="yes"),
            "include_stop_str_in_output",
        ),
        (dict(beam_width=2, max_tokens=8, early_stopping="always"), "early_stopping"),
        (dict(beam_width=2, max_tokens=8, early_stopping=1), "early_stopping"),
    ],
)
def test_bad_params_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BeamSearchParams(**kwargs)


def test_bad_calls_raise_value_error(llm):
    with pytest.raises(ValueError, match="beam_width=11 needs 22 logprobs"):
        llm.beam_search("Hello", BeamSearchParams(beam_width=11, max_tokens=4))  # max_logprobs 20
    with pytest.raises(ValueError, match="BeamSearchParams"):
        llm.beam_search("Hello", SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="max_model_len"):
        llm.beam_search([[5] * 256], BeamSearchParams(beam_width=2, max_tokens=4))
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.beam_search({"prompt": ""}, BeamSearchParams(beam_width=2, max_tokens=4))
    with pytest.raises(ValueError, match="no prompts"):
        llm.beam_search([], BeamSearchParams(beam_width=2, max_tokens=4))
    assert not llm.llm_engine.has_unfinished_requests()


def test_cli_generate_beam_width(llm, tmp_path, capsys):
    from jaxllm.entrypoints.cli import main

    out = tmp_path / "out.jsonl"
    rc = main(
        [
            "generate",
            TEXTS[0],
            "--beam-width",
            "2",
            "--max-tokens",
            "6",
            "--length-penalty",
            "0.5",
            "--no-progress",
            "-o",
            str(out),
        ],
        llm_factory=lambda **kw: llm,
    )
    assert rc == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    params = BeamSearchParams(beam_width=2, max_tokens=6, length_penalty=0.5)
    want = llm.beam_search(TEXTS[0], params)[0]
    assert [o["token_ids"] for o in row["outputs"]] == [s.output_token_ids for s in want.sequences]
    assert [o["text"] for o in row["outputs"]] == [s.text for s in want.sequences]
    assert row["prompt"] == TEXTS[0] and row["num_prompt_tokens"] == len(want.prompt_token_ids)
    assert main(["generate", "x", "--beam-width", "2", "--top-p", "0.5"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert main(["generate", "x", "--beam-width", "0"]) == 2
    assert "beam_width" in capsys.readouterr().err
