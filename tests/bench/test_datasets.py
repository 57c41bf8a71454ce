"""Benchmark dataset loaders: JSONL (text, token ids, input lengths) and ShareGPT JSON.

The tokenizer is a character tokenizer (token id = code point), so every expected token list and
output length is computed independently of the loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxllm.benchmarks.datasets import (
    BenchRequest,
    detect_format,
    load_dataset,
    load_jsonl,
    load_sharegpt,
    synthetic_requests,
    workload_summary,
)


class CharTokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


TOK = CharTokenizer()


def _jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_jsonl_text_ids_and_input_len(tmp_path):
    path = _jsonl(
        tmp_path,
        [
            {"prompt": "hello", "output_len": 3},
            {"prompt_token_ids": [5, 6, 7]},
            "",  # blank lines are skipped
            {"input_len": 6, "output_len": 2},
        ],
    )
    reqs = load_jsonl(path, TOK, 9, vocab_size=200, seed=3)
    assert [r.prompt_token_ids for r in reqs[:2]] == [[104, 101, 108, 108, 111], [5, 6, 7]]
    assert reqs[0].prompt == "hello"
    assert [r.output_len for r in reqs] == [3, 9, 2]
    # input_len: random ids drawn from the seeded generator, inside the vocabulary
    want = np.random.default_rng(3).integers(0, 200, size=6).tolist()
    assert reqs[2].prompt_token_ids == want
    assert workload_summary(reqs) == {
        "num_requests": 3,
        "input_tokens": 14,
        "output_tokens": 14,
        "input_len_min": 3,
        "input_len_max": 6,
        "input_len_mean": 14 / 3,
        "output_len_min": 2,
        "output_len_max": 9,
    }
    assert [r.input_len for r in load_jsonl(path, TOK, 9, vocab_size=200, num=2)] == [5, 3]


@pytest.mark.parametrize(
    "row, message",
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"output_len": 3}, "needs 'prompt', 'prompt_token_ids' or 'input_len'"),
        ({"prompt": "x", "output_len": 0}, "output_len must be a positive integer"),
        ({"prompt_token_ids": []}, "non-empty list"),
        ({"prompt_token_ids": [1, 999]}, "outside the model's vocabulary"),
        ({"input_len": -2}, "input_len must be a positive integer"),
        ({"prompt": ""}, "non-empty string"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, row, message):
    path = _jsonl(tmp_path, [{"prompt": "ok"}, row])
    with pytest.raises(ValueError, match=message) as e:
        load_jsonl(path, TOK, 4, vocab_size=500)
    assert f"{path}:2" in str(e.value)


def test_jsonl_text_needs_a_tokenizer(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "hi"}])
    with pytest.raises(ValueError, match="no tokenizer"):
        load_jsonl(path, None, 4)
    with pytest.raises(ValueError, match="no requests"):
        load_jsonl(_jsonl(tmp_path, [""], "empty.jsonl"), TOK, 4)


def _sharegpt(tmp_path, convs):
    path = tmp_path / "sg.json"
    path.write_text(json.dumps([{"id": str(i), "conversations": c} for i, c in enumerate(convs)]))
    return str(path)


def test_sharegpt_first_exchange_and_filter(tmp_path):
    long_prompt = "p" * 1025
    path = _sharegpt(
        tmp_path,
        [
            [
                {"from": "human", "value": "What is JAX?"},
                {"from": "gpt", "value": "A library."},
                {"from": "human", "value": "more"},
                {"from": "gpt", "value": "ignored reply"},
            ],
            [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello there"},
            ],  # prompt < 4
            [{"from": "gpt", "value": "no human turn first"}],  # no exchange
            [
                {"from": "system", "value": "sys"},
                {"from": "user", "value": "Name a prime."},
                {"from": "assistant", "value": "Seven."},
            ],
            [
                {"from": "human", "value": long_prompt},
                {"from": "gpt", "value": "long one"},
            ],  # > 1024
            [
                {"from": "human", "value": "Say a lot"},
                {"from": "gpt", "value": "x" * 2040},
            ],  # total > 2048
        ],
    )
    reqs = load_sharegpt(path, TOK)
    assert [r.prompt for r in reqs] == ["What is JAX?", "Name a prime."]
    assert [r.prompt_token_ids for r in reqs] == [
        TOK.encode("What is JAX?"),
        TOK.encode("Name a prime."),
    ]
    assert [r.output_len for r in reqs] == [len("A library."), len("Seven.")]
    forced = load_sharegpt(path, TOK, output_len=7, num=1)
    assert [(r.prompt, r.output_len) for r in forced] == [("What is JAX?", 7)]


def test_sharegpt_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"conversations": []}))
    with pytest.raises(ValueError, match="JSON list of conversations"):
        load_sharegpt(str(bad), TOK)
    bad.write_text(json.dumps([{"id": "0"}]))
    with pytest.raises(ValueError, match="entry 0: expected an object with 'conversations'"):
        load_sharegpt(str(bad), TOK)
    path = _sharegpt(tmp_path, [[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]])
    with pytest.raises(ValueError, match="no conversation passed the length filter"):
        load_sharegpt(path, TOK)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        load_sharegpt(path, None)


def test_load_dataset_detects_the_format(tmp_path):
    sg = _sharegpt(
        tmp_path, [[{"from": "human", "value": "Tell me"}, {"from": "gpt", "value": "Sure!"}]]
    )
    jl = _jsonl(tmp_path, [{"prompt": "Tell me", "output_len": 2}])
    assert detect_format(sg) == "sharegpt" and detect_format(jl) == "jsonl"
    assert load_dataset(sg, TOK, 9) == [BenchRequest(TOK.encode("Tell me"), 5, "Tell me")]
    assert load_dataset(sg, TOK, 9, force_output_len=True)[0].output_len == 9
    assert load_dataset(jl, TOK, 9) == [BenchRequest(TOK.encode("Tell me"), 2, "Tell me")]
    with pytest.raises(ValueError, match="dataset format must be one of"):
        load_dataset(jl, TOK, 9, fmt="csv")


def test_synthetic_requests_are_seeded():
    a = synthetic_requests(5, 4, 9, 3, 100, seed=1)
    assert a == synthetic_requests(5, 4, 9, 3, 100, seed=1)
    assert a != synthetic_requests(5, 4, 9, 3, 100, seed=2)
    assert all(4 <= r.input_len <= 9 and r.output_len == 3 for r in a)
    assert all(0 <= t < 100 for r in a for t in r.prompt_token_ids)
