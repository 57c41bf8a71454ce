"""Incremental detokenization with stop strings (host side; never imports JAX).

One `IncrementalDetokenizer` lives with each running sequence. Each engine step hands it the new
token ids; it appends their text to `output_text`, checks the stop strings, and truncates the text
at a match.

How the text grows (the "prefix/read offset" scheme vLLM uses for any HF tokenizer):

    tokens:  ... | prefix window | unread tokens (new) |
                 ^prefix_offset  ^read_offset          ^len(tokens)

The text of `tokens[prefix_offset:read_offset]` has already been emitted. After new tokens arrive we
decode `tokens[prefix_offset:]`; the part past the prefix window's text is the new text. Decoding a
few tokens of context (rather than the new tokens alone) keeps word-boundary spaces right for
tokenizers whose decoders strip or merge them. If the decoded window ends in U+FFFD, a multi-byte
character is split across tokens: we emit nothing and wait for the next token(s). Only a short
window is decoded each step, so the total cost is linear in the output length.

Stop strings are searched only in the region that can hold a new match: the new characters plus
`max(len(stop)) - 1` characters before them. `get_next_output_text` holds back, while streaming,
the longest tail of the text that could still become a stop string, and releases it at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["IncrementalDetokenizer", "PROMPT_CONTEXT_TOKENS"]

# Prompt tokens decoded as context before the first generated token.
PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


def _special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that `tokenizer.decode(..., skip_special_tokens=True)` drops.

    `all_special_ids` lists only the named special tokens (bos/eos/...); fast tokenizers also drop
    every added token flagged `special`, so both sets are joined.
    """
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for token_id, token in added.items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return frozenset(ids)


class IncrementalDetokenizer:
    """Turns a growing list of generated token ids into text, and finds stop strings.

    Args:
      tokenizer: an HF tokenizer (uses `convert_ids_to_tokens` and `convert_tokens_to_string`),
        or None: then ids are only recorded and no text is produced.
      prompt_token_ids: the prompt; its last few tokens are decoded as context.
      skip_special_tokens: drop special tokens from the text (as `tokenizer.decode` does).
      spaces_between_special_tokens: accepted for vLLM parity. It reaches the text only through the
        tokenizer's own `convert_tokens_to_string`; fast tokenizers (and all of transformers 5,
        like vLLM's fast path) ignore it.
      stop: stop strings; the text is cut at the first one found.
      include_stop_str_in_output: keep the matched stop string at the end of the text.
      min_tokens: stop strings are not checked until more than this many tokens were generated.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        stop: Sequence[str] | None = None,
        include_stop_str_in_output: bool = False,
        *,
        min_tokens: int = 0,
    ) -> None:
        stop = list(stop or [])
        for s in stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        if stop and tokenizer is None:
            raise ValueError("stop strings need a tokenizer (tokenizer is None)")
        if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 0:
            raise ValueError(f"min_tokens must be a non-negative integer, got {min_tokens!r}")

        self.tokenizer = tokenizer
        self.skip_special_tokens = bool(skip_special_tokens)
        self.spaces_between_special_tokens = bool(spaces_between_special_tokens)
        self.stop: list[str] = stop
        self.include_stop_str_in_output = bool(include_stop_str_in_output)
        self.min_tokens = min_tokens

        self.output_token_ids: list[int] = []
        # The output text as appended pieces, joined only when the whole text is read, so that
        # growing it token by token costs linear time (str += on an attribute copies each time).
        self._pieces: list[str] = []
        self._text_len = 0
        self.stop_string: str | None = None  # set once a stop string matched
        self._released = 0  # chars of output_text already handed out by get_next_output_text(delta)

        self._skip_ids: frozenset[int] = frozenset()
        self._tokens: list[str] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text = ""  # text of tokens[prefix_offset:read_offset]
        if tokenizer is not None:
            if self.skip_special_tokens:
                self._skip_ids = _special_token_ids(tokenizer)
            self._init_prompt_context(prompt_token_ids)

    @classmethod
    def from_sampling_params(
        cls, tokenizer: Any, prompt_token_ids: Sequence[int], params: Any
    ) -> IncrementalDetokenizer:
        """From a `SamplingParams` (read by attribute name; tokenizer None if detokenize=False)."""
        return cls(
            tokenizer if getattr(params, "detokenize", True) else None,
            prompt_token_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
            min_tokens=params.min_tokens,
        )

    # ------------------------------------------------------------------ token -> text

    def _ids_to_tokens(self, token_ids: Iterable[int]) -> list[str]:
        ids = [i for i in token_ids if i not in self._skip_ids]
        if not ids:
            return []
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        # Ids past the tokenizer's vocabulary (padded embedding rows) decode to nothing.
        return [t if t is not None else "" for t in tokens]

    def _to_string(self, tokens: list[str]) -> str:
        return self.tokenizer.convert_tokens_to_string(tokens) if tokens else ""

    def _init_prompt_context(self, prompt_token_ids: Sequence[int]) -> None:
        # A couple of extra tokens: skipped special tokens may shrink the context.
        context_ids = [int(i) for i in prompt_token_ids[-(PROMPT_CONTEXT_TOKENS + 2) :]]
        self._tokens = self._ids_to_tokens(context_ids)
        self._read_offset = len(self._tokens)
        self._prefix_offset = max(self._read_offset - PROMPT_CONTEXT_TOKENS, 0)
        # If the prompt ends inside a multi-byte character, treat its last bytes as unread so the
        # character comes out whole once the generated tokens complete it.
        while self._read_offset > self._prefix_offset:
            text = self._to_string(self._tokens[self._prefix_offset : self._read_offset])
            if not text.endswith(_REPLACEMENT_CHAR):
                break
            self._read_offset -= 1
        self._prefix_text = self._to_string(self._tokens[self._prefix_offset : self._read_offset])

    def _decode_next(self, token_id: int) -> str:
        """Append one token; return the text it completes ("" while a character is split)."""
        new_tokens = self._ids_to_tokens((token_id,))
        if not new_tokens:
            return ""  # a skipped special token adds no text
        self._tokens.extend(new_tokens)
        text = self._to_string(self._tokens[self._prefix_offset :])
        if len(text) <= len(self._prefix_text) or text.endswith(_REPLACEMENT_CHAR):
            return ""
        new_text = text[len(self._prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._tokens)
        self._prefix_text = self._to_string(self._tokens[self._prefix_offset : self._read_offset])
        return new_text

    # ------------------------------------------------------------------ output text storage

    @property
    def output_text(self) -> str:
        """The text generated so far (cut at the stop string once one matched)."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def _append(self, text: str) -> None:
        if text:
            self._pieces.append(text)
            self._text_len += len(text)

    def _text_from(self, start: int) -> str:
        """output_text[start:], reading only the pieces that hold it."""
        need = self._text_len - max(start, 0)
        if need <= 0:
            return ""
        parts, got = [], 0
        for piece in reversed(self._pieces):
            parts.append(piece)
            got += len(piece)
            if got >= need:
                break
        tail = "".join(reversed(parts))
        return tail[len(tail) - need :]

    def _truncate(self, length: int) -> None:
        self._pieces = [self.output_text[:length]]
        self._text_len = length

    # ------------------------------------------------------------------ public API

    def update(self, new_token_ids: Sequence[int], stop_terminated: bool = False) -> str | None:
        """Append `new_token_ids`; return the stop string they completed, or None.

        stop_terminated: the last id is a stop token (eos or a `stop_token_ids` entry) that ended
        the sequence. Its text is left out of `output_text` unless include_stop_str_in_output, and
        stop strings are not checked (as vLLM does).
        """
        if self.stop_string is not None:
            raise ValueError(
                f"update() called after stop string {self.stop_string!r} already ended the sequence"
            )
        ids = [int(i) for i in new_token_ids]
        if not ids:
            return None
        if self.tokenizer is None:
            self.output_token_ids.extend(ids)
            return None

        skipped_stop_id = None
        if stop_terminated and not self.include_stop_str_in_output:
            skipped_stop_id = ids.pop()

        check_from = self._text_len  # new characters start here
        for token_id in ids:
            self.output_token_ids.append(token_id)
            self._append(self._decode_next(token_id))
            if len(self.output_token_ids) <= self.min_tokens:
                check_from = self._text_len  # no stop strings before min_tokens
        if skipped_stop_id is not None:
            self.output_token_ids.append(skipped_stop_id)
        if stop_terminated or not self.stop or len(self.output_token_ids) <= self.min_tokens:
            return None
        return self._check_stop_strings(check_from)

    def _check_stop_strings(self, check_from: int) -> str | None:
        """Find the earliest stop string ending in output_text[check_from:]; truncate there."""
        if check_from >= self._text_len:
            return None
        base = max(check_from - max(len(s) for s in self.stop) + 1, 0)
        window = self._text_from(base)  # output_text[base:]
        best: tuple[int, str] | None = None
        for s in self.stop:
            # Only matches that end inside the new characters are new.
            idx = window.find(s, max(check_from - len(s) + 1 - base, 0))
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, s)
        if best is None:
            return None
        idx, s = best
        self._truncate(base + idx + (len(s) if self.include_stop_str_in_output else 0))
        self.stop_string = s
        return s

    def _held_back_chars(self) -> int:
        """Length of the longest tail of output_text that is a proper prefix of a stop string."""
        if not self.stop or self.include_stop_str_in_output or self.stop_string is not None:
            return 0
        text = self._text_from(self._text_len - max(len(s) for s in self.stop) + 1)
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def get_next_output_text(self, finished: bool, delta: bool) -> str:
        """Text to hand to the user now.

        While streaming (finished=False) the tail that might still grow into a stop string is held
        back; once finished everything is released. delta=True returns only what was not returned
        by an earlier delta call; delta=False returns the whole text so far (minus the held tail).
        """
        end = self._text_len if finished else self._text_len - self._held_back_chars()
        if not delta:
            return self.output_text[:end]
        if end <= self._released:
            return ""
        chunk = self._text_from(self._released)[: end - self._released]
        self._released = end
        return chunk

    def __repr__(self) -> str:
        return (
            f"IncrementalDetokenizer(num_output_tokens={len(self.output_token_ids)}, "
            f"output_text={self.output_text!r}, stop={self.stop!r}, "
            f"stop_string={self.stop_string!r})"
        )
