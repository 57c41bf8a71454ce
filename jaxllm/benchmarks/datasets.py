"""Benchmark workloads: every request becomes token ids and an output length before timing.

Three sources:
- random prompts: `synthetic_requests(num, lo, hi, output_len, vocab_size, seed)`, input lengths
  drawn uniformly from [lo, hi], token ids uniform over the vocabulary (seeded);
- a JSONL file (`load_jsonl`), one object a line, with one of
    {"prompt": TEXT}                  tokenized with the model's tokenizer
    {"prompt_token_ids": [ids...]}    used as is
    {"input_len": N}                  N random token ids (seeded; no tokenizer needed)
  and optionally "output_len": N (default: the caller's output length);
- a ShareGPT-format JSON file (`load_sharegpt`): a list of {"conversations": [{"from": "human",
  "value": TEXT}, {"from": "gpt", "value": TEXT}, ...]}; the first human turn is the prompt and the
  token count of the reply that follows it is the output length (unless one is forced). Pairs with
  a prompt or reply under 4 tokens, a prompt over 1024 tokens or a total over 2048 are dropped,
  the usual filter of serving benchmarks.

`load_dataset(path, ...)` picks the format from the file (a top-level JSON list: ShareGPT; else
JSONL) unless `fmt` names it. Host-side: numpy only, no JAX.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BenchRequest",
    "parse_lengths",
    "input_lengths",
    "random_token_prompts",
    "synthetic_requests",
    "load_jsonl",
    "load_sharegpt",
    "load_dataset",
    "detect_format",
    "workload_summary",
    "DATASET_FORMATS",
]

DATASET_FORMATS = ("auto", "jsonl", "sharegpt")
SHAREGPT_MIN_TOKENS = 4
SHAREGPT_MAX_PROMPT = 1024
SHAREGPT_MAX_TOTAL = 2048
_HUMAN = ("human", "user")
_ASSISTANT = ("gpt", "assistant", "chatgpt", "bard", "model")


@dataclasses.dataclass
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int
    prompt: str | None = None  # the text, when the dataset gave text

    @property
    def input_len(self) -> int:
        return len(self.prompt_token_ids)


# ----- random prompts ----------------------------------------------------------------------------
def parse_lengths(spec: str) -> tuple[int, int]:
    """'32:256' -> (32, 256) (inclusive range); '128' -> (128, 128)."""
    parts = str(spec).split(":")
    try:
        if len(parts) == 1:
            lo = hi = int(parts[0])
        elif len(parts) == 2:
            lo, hi = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"lengths must look like LO:HI or N (e.g. 32:256), got {spec!r}") from None
    if lo < 1 or hi < lo:
        raise ValueError(f"lengths {spec!r}: need 1 <= LO <= HI")
    return lo, hi


def input_lengths(num: int, lo: int, hi: int, seed: int) -> list[int]:
    """`num` input lengths drawn uniformly from [lo, hi] (seeded)."""
    if num < 1:
        raise ValueError(f"number of prompts must be >= 1, got {num}")
    rng = np.random.default_rng(seed)
    return [int(n) for n in rng.integers(lo, hi + 1, size=num)]


def random_token_prompts(lengths: Sequence[int], vocab_size: int, seed: int) -> list[list[int]]:
    """One prompt of random token ids in [0, vocab_size) per length (seeded)."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=n).tolist() for n in lengths]


def synthetic_requests(
    num: int, lo: int, hi: int, output_len: int, vocab_size: int, seed: int
) -> list[BenchRequest]:
    lens = input_lengths(num, lo, hi, seed)
    prompts = random_token_prompts(lens, vocab_size, seed + 1)
    return [BenchRequest(p, output_len) for p in prompts]


# ----- JSONL -------------------------------------------------------------------------------------
def _positive_int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {what} must be a positive integer, got {value!r}")
    return value


def _encode(tokenizer: Any, text: str, where: str) -> list[int]:
    if tokenizer is None:
        raise ValueError(
            f"{where}: text prompt, but the model has no tokenizer; "
            "give prompt_token_ids or input_len instead"
        )
    return [int(t) for t in tokenizer.encode(text)]


def load_jsonl(
    path: str,
    tokenizer: Any,
    default_output_len: int,
    *,
    vocab_size: int | None = None,
    seed: int = 0,
    num: int | None = None,
) -> list[BenchRequest]:
    """Requests of a JSONL file (see the module doc); `num` keeps the first `num` of them."""
    reqs: list[BenchRequest] = []
    rng = np.random.default_rng(seed)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: each line must be a JSON object")
            out_len = _positive_int(rec.get("output_len", default_output_len), "output_len", where)
            given = [k for k in ("prompt_token_ids", "prompt", "input_len") if k in rec]
            if not given:
                raise ValueError(f"{where}: needs 'prompt', 'prompt_token_ids' or 'input_len'")
            if "prompt_token_ids" in rec:
                ids = rec["prompt_token_ids"]
                if (
                    not isinstance(ids, list)
                    or not ids
                    or not all(
                        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids
                    )
                ):
                    raise ValueError(
                        f"{where}: prompt_token_ids must be a non-empty list of non-negative ints"
                    )
                req = BenchRequest(list(ids), out_len, rec.get("prompt"))
            elif "prompt" in rec:
                text = rec["prompt"]
                if not isinstance(text, str) or not text:
                    raise ValueError(f"{where}: prompt must be a non-empty string")
                req = BenchRequest(_encode(tokenizer, text, where), out_len, text)
            else:
                n = _positive_int(rec["input_len"], "input_len", where)
                if vocab_size is None:
                    raise ValueError(f"{where}: input_len needs the model's vocabulary size")
                req = BenchRequest(rng.integers(0, vocab_size, size=n).tolist(), out_len)
            if vocab_size is not None and max(req.prompt_token_ids) >= vocab_size:
                raise ValueError(
                    f"{where}: token id {max(req.prompt_token_ids)} is outside the "
                    f"model's vocabulary ({vocab_size})"
                )
            reqs.append(req)
            if num is not None and len(reqs) >= num:
                break
    if not reqs:
        raise ValueError(f"{path}: no requests in the dataset")
    return reqs


# ----- ShareGPT ----------------------------------------------------------------------------------
def _first_exchange(conv: Any, where: str) -> tuple[str, str] | None:
    """(first human turn, the reply after it), or None when the conversation has no such pair."""
    if not isinstance(conv, list):
        raise ValueError(f"{where}: 'conversations' must be a list of turns")
    for i, turn in enumerate(conv[:-1]):
        nxt = conv[i + 1]
        if not (isinstance(turn, dict) and isinstance(nxt, dict)):
            raise ValueError(f"{where}: each turn must be an object with 'from' and 'value'")
        if (
            str(turn.get("from", "")).lower() in _HUMAN
            and str(nxt.get("from", "")).lower() in _ASSISTANT
        ):
            prompt, reply = turn.get("value"), nxt.get("value")
            if isinstance(prompt, str) and isinstance(reply, str):
                return prompt, reply
            raise ValueError(f"{where}: turn 'value' must be a string")
    return None


def load_sharegpt(
    path: str,
    tokenizer: Any,
    *,
    output_len: int | None = None,
    num: int | None = None,
) -> list[BenchRequest]:
    """Requests of a ShareGPT JSON file (see the module doc), in file order; `num` keeps the first
    `num` that pass the length filter; `output_len` forces every output length."""
    if tokenizer is None:
        raise ValueError(f"{path}: a ShareGPT dataset is text and needs the model's tokenizer")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: a ShareGPT file holds a JSON list of conversations")
    reqs: list[BenchRequest] = []
    for i, entry in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or "conversations" not in entry:
            raise ValueError(f"{where}: expected an object with 'conversations'")
        pair = _first_exchange(entry["conversations"], where)
        if pair is None:
            continue
        prompt_ids = _encode(tokenizer, pair[0], where)
        n_out = output_len if output_len is not None else len(_encode(tokenizer, pair[1], where))
        if len(prompt_ids) < SHAREGPT_MIN_TOKENS or n_out < SHAREGPT_MIN_TOKENS:
            continue
        if len(prompt_ids) > SHAREGPT_MAX_PROMPT or len(prompt_ids) + n_out > SHAREGPT_MAX_TOTAL:
            continue
        reqs.append(BenchRequest(prompt_ids, n_out, pair[0]))
        if num is not None and len(reqs) >= num:
            break
    if not reqs:
        raise ValueError(
            f"{path}: no conversation passed the length filter (prompt and reply >= "
            f"{SHAREGPT_MIN_TOKENS} tokens, prompt <= {SHAREGPT_MAX_PROMPT}, total <= "
            f"{SHAREGPT_MAX_TOTAL})"
        )
    return reqs


# ----- dispatch ----------------------------------------------------------------------------------
def detect_format(path: str) -> str:
    """'sharegpt' when the file's first non-blank character opens a JSON list, else 'jsonl'."""
    with open(path, encoding="utf-8") as f:
        while True:
            ch = f.read(1)
            if not ch:
                raise ValueError(f"{path}: the dataset file is empty")
            if not ch.isspace():
                return "sharegpt" if ch == "[" else "jsonl"


def load_dataset(
    path: str,
    tokenizer: Any,
    default_output_len: int,
    *,
    fmt: str = "auto",
    vocab_size: int | None = None,
    seed: int = 0,
    num: int | None = None,
    force_output_len: bool = False,
) -> list[BenchRequest]:
    """Requests of a dataset file. For ShareGPT the output length is the reply's token count
    unless `force_output_len` (then `default_output_len`)."""
    if fmt not in DATASET_FORMATS:
        raise ValueError(f"dataset format must be one of {', '.join(DATASET_FORMATS)}, got {fmt!r}")
    if num is not None and num < 1:
        raise ValueError(f"number of prompts must be >= 1, got {num}")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "sharegpt":
        return load_sharegpt(
            path, tokenizer, num=num, output_len=default_output_len if force_output_len else None
        )
    return load_jsonl(
        path, tokenizer, default_output_len, vocab_size=vocab_size, seed=seed, num=num
    )


def workload_summary(reqs: Sequence[BenchRequest]) -> dict:
    ins = [r.input_len for r in reqs]
    outs = [r.output_len for r in reqs]
    return {
        "num_requests": len(reqs),
        "input_tokens": sum(ins),
        "output_tokens": sum(outs),
        "input_len_min": min(ins),
        "input_len_max": max(ins),
        "input_len_mean": sum(ins) / len(ins),
        "output_len_min": min(outs),
        "output_len_max": max(outs),
    }
