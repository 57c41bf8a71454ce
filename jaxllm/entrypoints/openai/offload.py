"""Request work that must not run on the server's event loop: chat templating, tokenization and
detokenization of request text, in a bounded pool of worker threads.

One event loop serves every stream, `/health` and `/metrics`; a 4 MiB prompt tokenized on it held
all of them for 3.1 s (issue 27). A worker thread helps where the work lets go of the GIL, so what
runs here is chosen by what holds it (measured on a 2-core CPU, 4 MiB of English text = 932k
tokens, SmolLM2's tokenizer; "stall" is the longest the event loop waited meanwhile):

- the HF fast tokenizer (Rust) releases the GIL while it encodes a *batch*; the single-text
  `Tokenizer.encode` does not (2.9 s stall on a thread: never used here). transformers' `encode`
  goes through `encode_batch` (81 ms stall), but converting the ids to Python (~25 ms) and
  dropping the `Encoding` with its per-token strings and offsets (~85 ms) still hold the GIL in
  one piece each. `encode_text` asks the backend for `encode_batch_fast` on large texts instead:
  the same ids, no offsets, 1.1 s instead of 2.8 s, ~15 ms to drop;
- `tok.decode` holds the GIL (330 ms stall per million ids); `decode_batch` releases it (17 ms),
  so `decode_ids` uses it for many ids;
- a Jinja chat template is Python bytecode, which hands the GIL over every switch interval
  (5 ms): a heavy template slows the loop down a little but cannot stop it;
- JSON of a million token ids is built in slices (`json_int_list`), each holding the GIL for a few
  milliseconds instead of one ~90 ms `json.dumps`.

Parsing a request's JSON (FastAPI, on the loop) also holds the GIL, wherever it runs:
--max-request-body-bytes bounds it (body_limit).

The pool runs at most `max_workers` jobs at once; further requests wait for a slot on the loop
(an asyncio semaphore), without blocking it. A slot is given back when its job ends, also when the
request that queued it was cancelled meanwhile, so the bound holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["WorkerPool", "decode_ids", "default_workers", "encode_text", "json_int_list"]

T = TypeVar("T")

# texts from this many characters take the backend's encode_batch_fast (below it, transformers'
# encode: its extra GIL-held cost is well under a millisecond)
LARGE_TEXT_CHARS = 32 * 1024
# decodes of this many ids take the backend's decode_batch
LARGE_DECODE_IDS = 8192
# token ids per json.dumps slice: a few milliseconds each
_JSON_SLICE = 65536


def default_workers() -> int:
    """Worker threads of a server's pool: 2 to 4, by the machine's cores."""
    return max(2, min(4, os.cpu_count() or 2))


class WorkerPool:
    """A bounded pool of worker threads for CPU work of requests (`await pool.run(fn, *args)`).

    The threads start on first use and end when the pool is garbage collected (a stopped app)."""

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or default_workers()
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {self.max_workers}")
        self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="jaxllm-request")
        self._slots = asyncio.Semaphore(self.max_workers)
        self.running = 0  # jobs holding a slot now (tests check the bound)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) on a worker thread, once a slot is free; its exception propagates."""
        loop = asyncio.get_running_loop()
        await self._slots.acquire()
        self.running += 1
        try:
            future = self._executor.submit(fn, *args, **kwargs)
        except BaseException:
            self._release()
            raise

        def done(_: Future) -> None:  # on the worker thread, or here if cancelled before it ran
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._release)

        future.add_done_callback(done)
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self.running -= 1
        self._slots.release()


def _fast_class() -> type | None:
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # transformers 4: the same class under its older name
        try:
            from transformers import PreTrainedTokenizerFast as TokenizersBackend
        except ImportError:
            return None
    return TokenizersBackend


def _fast_backend(tok: Any) -> Any:
    """The Rust tokenizer behind `tok` when calling its `encode_batch_fast` gives exactly the ids
    `tok.encode` gives (a plain transformers fast tokenizer, no truncation or padding set, the
    same special-token splitting); else None."""
    fast = _fast_class()
    if fast is None or not isinstance(tok, fast):
        return None
    cls = type(tok)
    if cls.encode is not fast.encode or cls._encode_plus is not fast._encode_plus:
        return None  # a subclass that tokenizes its own way
    backend = getattr(tok, "_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    if backend.encode_special_tokens != bool(getattr(tok, "split_special_tokens", False)):
        return None
    return backend


def encode_text(tok: Any, text: str, add_special_tokens: bool) -> list[int]:
    """`tok.encode(text, add_special_tokens=...)` as a list, with less of it holding the GIL for
    large texts (module docstring). Run it on a worker thread."""
    if len(text) >= LARGE_TEXT_CHARS:
        backend = _fast_backend(tok)
        if backend is not None:
            encoding = backend.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0]
            return encoding.ids
    return list(tok.encode(text, add_special_tokens=add_special_tokens))


def _fast_decoder(tok: Any) -> Any:
    """The Rust tokenizer behind `tok` when its `decode_batch` gives exactly `tok.decode`'s text
    (a plain transformers fast tokenizer that does not clean up spaces); else None."""
    fast = _fast_class()
    if fast is None or not isinstance(tok, fast):
        return None
    cls = type(tok)
    if cls.decode is not fast.decode or cls._decode is not fast._decode:
        return None
    if getattr(tok, "clean_up_tokenization_spaces", True):
        return None
    backend = getattr(tok, "_tokenizer", None)
    return backend if backend is not None and hasattr(backend, "decode_batch") else None


def decode_ids(tok: Any, ids: Sequence[int]) -> str:
    """`tok.decode(ids)`; run it on a worker thread. Many ids go through the backend's
    `decode_batch`, which releases the GIL (`decode` holds it: ~330 ms per million ids)."""
    ids = list(ids)
    if len(ids) >= LARGE_DECODE_IDS:
        backend = _fast_decoder(tok)
        if backend is not None:
            return backend.decode_batch([ids], skip_special_tokens=False)[0]
    return tok.decode(ids)


def json_int_list(values: Sequence[int]) -> str:
    """Compact `json.dumps(list(values))`, built in slices that each hold the GIL briefly."""
    parts = []
    for start in range(0, len(values), _JSON_SLICE):
        piece = values[start : start + _JSON_SLICE]
        parts.append(json.dumps(list(piece), separators=(",", ":"))[1:-1])
    return "[" + ",".join(parts) + "]"
