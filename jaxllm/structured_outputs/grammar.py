"""Grammars compiled by llguidance into matchers, and the token bitmasks they allow (host side).

    compiler = GrammarCompiler(hf_tokenizer, vocab_size, eos_token_ids)
    future = compiler.submit(params)           # compiled in a thread pool, cached by the spec
    matcher = future.result().new_matcher()     # per sequence: its own parse state
    fill_bitmasks([(matcher, row)], bitmask)    # bitmask [R, ceil(V / 32)] int32, bit v of word
                                                # v // 32 set <=> token v allowed next
    matcher.consume_token(token)                # after the token is sampled

A compiled `Grammar` holds an llguidance matcher in its initial state; each sequence takes a deep
copy, so equal specs (the same schema from many requests) compile once. The tokenizer's llguidance
view (~1 s to build for a 50k vocabulary) is built once, on the first compilation, also in the
pool. Compilation errors (a malformed schema, regex or grammar) surface as ValueErrors naming the
problem, from the future.

Grammar text per kind (llguidance's own formats):
- json: `grammar_from_json_schema`, JSON written compactly-but-readably (", " and ": " between
  items, no other whitespace; `disable_any_whitespace` drops the spaces too). A small model left
  free to emit whitespace can spend its whole budget on newlines inside an object;
- json_object: the schema {"type": "object"};
- regex: `grammar_from_regex`;
- choice: a Lark grammar whose start rule is one of the strings, each a JSON-quoted literal;
- grammar: Lark as is; GBNF (llama.cpp's `::=` rules) through llguidance's `gbnf_to_lark`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from jaxllm.structured_outputs.params import StructuredOutputsParams


def bitmask_width(vocab_size: int) -> int:
    """int32 words per row of a token bitmask."""
    return (vocab_size + 31) // 32


def grammar_text(params: StructuredOutputsParams) -> str:
    """The llguidance grammar (its JSON text) of `params`; ValueError for a malformed spec that
    llguidance's converters reject outright (others fail at compilation)."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import gbnf_to_lark

    kind = params.kind
    if kind in ("json", "json_object"):
        schema: Any = params.json if kind == "json" else {"type": "object"}
        if isinstance(schema, str):
            schema = json.loads(schema)
        compact = params.disable_any_whitespace
        options = {
            "whitespace_flexible": False,
            "item_separator": "," if compact else ", ",
            "key_separator": ":" if compact else ": ",
        }
        try:
            return LLMatcher.grammar_from_json_schema(schema, overrides=options)
        except ValueError as e:
            raise ValueError(f"invalid JSON schema: {e}") from e
    if kind == "regex":
        return LLMatcher.grammar_from_regex(params.regex)
    if kind == "choice":
        options_lark = " | ".join(json.dumps(c) for c in params.choice or ())
        return LLMatcher.grammar_from_lark(f"start: {options_lark}\n")
    text = params.grammar or ""
    if "::=" in text:  # GBNF
        try:
            text = gbnf_to_lark(text)
        except Exception as e:
            raise ValueError(f"invalid GBNF grammar: {e}") from e
    return LLMatcher.grammar_from_lark(text)


class Grammar:
    """A compiled grammar: an llguidance matcher in its initial state, copied per sequence."""

    def __init__(self, template: Any, kind: str):
        self._template = template
        self.kind = kind

    def new_matcher(self) -> Any:
        return self._template.deep_copy()


class GrammarCompiler:
    """Compiles StructuredOutputsParams into `Grammar`s in a thread pool, cached by spec.

    `tokenizer`: a fast Hugging Face tokenizer (llguidance reads its Rust tokenizer);
    `vocab_size`: the model's (the bitmask's width; ids past the tokenizer's are never allowed);
    `eos_token_ids`: the tokens that end a sequence once the grammar is complete."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_token_ids: Sequence[int],
        max_workers: int = 4,
        cache_size: int = 256,
    ):
        if tokenizer is None:
            raise ValueError("structured outputs need the model's tokenizer (it has none)")
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self._ll_tokenizer: Any = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="jaxllm-grammar")
        self._cache: dict[tuple, Future] = {}
        self._cache_size = cache_size

    def submit(self, params: StructuredOutputsParams) -> Future:
        """A future of the compiled Grammar of `params` (shared by equal specs)."""
        key = params.cache_key()
        with self._lock:
            future = self._cache.get(key)
            if future is None:
                future = self._pool.submit(self._compile, params)
                if len(self._cache) >= self._cache_size:  # drop the oldest entry
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = future
            return future

    def compile(self, params: StructuredOutputsParams) -> Grammar:
        """The compiled Grammar of `params`, waiting for it (ValueError if malformed)."""
        return self.submit(params).result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _llg_tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                from llguidance.hf import from_tokenizer

                try:
                    self._ll_tokenizer = from_tokenizer(
                        self._tokenizer, n_vocab=self.vocab_size, eos_token=self._eos or None
                    )
                except ValueError as e:
                    raise ValueError(f"structured outputs cannot read this tokenizer: {e}") from e
            return self._ll_tokenizer

    def _compile(self, params: StructuredOutputsParams) -> Grammar:
        from llguidance import LLMatcher

        tokenizer = self._llg_tokenizer()
        text = grammar_text(params)
        error = LLMatcher.validate_grammar(text, tokenizer)
        if error and not error.startswith("WARNING"):
            raise ValueError(f"invalid {params.kind} for structured outputs: {error}")
        template = LLMatcher(tokenizer, text, log_level=0)
        if template.is_error():
            raise ValueError(
                f"invalid {params.kind} for structured outputs: {template.get_error()}"
            )
        return Grammar(template, params.kind)


_executor: Any = None


def fill_bitmasks(
    matchers: Sequence[tuple[Any, int]],  # (matcher, row of `bitmask`)
    bitmask: np.ndarray,  # [R, W] int32, C-contiguous
) -> None:
    """Each matcher's allowed next tokens into its row (llguidance's threads, GIL released)."""
    global _executor
    from llguidance import LLExecutor
    from llguidance.numpy import fill_next_token_bitmask, fill_next_token_bitmask_par

    if len(matchers) == 1:
        matcher, row = matchers[0]
        fill_next_token_bitmask(matcher, bitmask, row)
        return
    if _executor is None:
        _executor = LLExecutor()
    fill_next_token_bitmask_par(_executor, list(matchers), bitmask)
