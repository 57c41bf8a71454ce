"""Per-batch sampling inputs for the on-device sampler (host side; numpy only, never imports JAX).

`SamplingMetadata` is a NamedTuple of numpy arrays, one row per sampled sequence, so it is a JAX
pytree as it stands: the runner `jax.device_put`s it and passes it into its jitted step, with
`SamplerFlags` (hashable, frozen) as a static argument so that features no row uses are not traced.

Conventions (R rows, V vocabulary):
  * top_k: 0 means "off" (k >= V is also stored as 0).
  * every row has a seed (uint32). The engine gives unseeded requests a random seed at arrival
    (`request_seed`), so a row's random stream depends only on (seed, gen_index), never on the
    batch around it. Seeds wider than 32 bits are folded to 32 (high word XOR low word).
  * gen_index = number of tokens the sequence has generated so far: len(output_token_ids) plus
    `num_pending_tokens` (sampled by a step still in flight under asynchronous scheduling).
  * id lists are padded with -1; the sampler ignores -1 entries.
  * padding rows (R < pad_rows_to) are greedy with neutral settings; callers drop their outputs.
  * widths are bucketed to limit the number of compiled shapes: B (logit bias) and Bn (banned
    ids) are 0 when no row uses them, else the next power of two >= max(8, longest row);
    Lo (output history) is 0 unless some row uses a presence/frequency/repetition penalty and
    Lp (prompt) is 0 unless some row uses a repetition penalty, else the next power of two
    >= max(16, longest row). Only rows that use penalties have their token histories filled in.
  * allowed_bitmask has width 0 unless some row has a grammar (structured outputs), so batches
    without one carry and trace nothing for it.
  * num_logprobs (in SamplerFlags) is the largest `logprobs` asked in the batch (-1 = V),
    rounded up to a power of two and capped at V; 0 when no row asks for more than the sampled
    token's logprob. Callers slice each row's own count out of the padded result.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from jaxllm.sampling_params import SAMPLING_EPS, SamplingParams

MIN_ID_WIDTH = 8  # minimum bucket for logit-bias and banned-id widths
MIN_HISTORY_WIDTH = 16  # minimum bucket for prompt/output token-history widths
PAD_ID = -1


class SamplingMetadata(NamedTuple):
    temperature: np.ndarray  # [R] f32; < 1e-5 means greedy
    top_k: np.ndarray  # [R] int32; 0 = off
    top_p: np.ndarray  # [R] f32; 1.0 = off
    min_p: np.ndarray  # [R] f32; 0.0 = off
    presence_penalty: np.ndarray  # [R] f32
    frequency_penalty: np.ndarray  # [R] f32
    repetition_penalty: np.ndarray  # [R] f32
    seeds: np.ndarray  # [R] uint32
    gen_index: np.ndarray  # [R] int32
    logit_bias_ids: np.ndarray  # [R, B] int32, pad -1
    logit_bias_values: np.ndarray  # [R, B] f32, pad 0
    banned_ids: np.ndarray  # [R, Bn] int32, pad -1
    output_token_ids: np.ndarray  # [R, Lo] int32, pad -1
    prompt_token_ids: np.ndarray  # [R, Lp] int32, pad -1
    # [R, W] int32, W = ceil(V / 32) when a row has a grammar (structured outputs), else 0: bit
    # v % 32 of word v // 32 set <=> token v may be sampled; rows without a grammar are all ones
    allowed_bitmask: np.ndarray


@dataclass(frozen=True)
class SamplerFlags:
    """Static (hashable) facts about a batch; pass as a static jit argument."""

    all_greedy: bool = True
    any_top_k: bool = False
    any_top_p: bool = False
    any_min_p: bool = False
    any_penalties: bool = False
    any_logit_bias: bool = False
    any_structured: bool = False  # some row has a token bitmask
    num_logprobs: int = 0

    @property
    def any_top_k_top_p(self) -> bool:
        return self.any_top_k or self.any_top_p


@dataclass(frozen=True)
class SamplingRow:
    """One sequence to sample for: its params, seed, token history and currently banned ids."""

    params: SamplingParams
    seed: int
    prompt_token_ids: Sequence[int] = ()
    output_token_ids: Sequence[int] = ()
    banned_token_ids: Sequence[int] = ()  # e.g. `min_tokens_banned_ids(...)`
    # tokens generated but not yet in output_token_ids (a step in flight); rows that use
    # penalties need the whole history, so they must have none
    num_pending_tokens: int = 0
    # the row's allowed next tokens [ceil(V / 32)] int32 (structured outputs), None: any
    allowed_bitmask: np.ndarray | None = None


def request_seed(params: SamplingParams) -> int:
    """The seed a request samples with: its own, or a fresh random one (drawn once, at arrival)."""
    return params.seed if params.seed is not None else secrets.randbits(32)


def min_tokens_banned_ids(
    params: SamplingParams, num_output_tokens: int, eos_token_ids: Sequence[int] = ()
) -> list[int]:
    """The model's eos ids (`eos_token_ids`) and the request's stop token ids while fewer than
    min_tokens tokens were generated, else []."""
    if num_output_tokens < params.min_tokens:
        return sorted(set(params.all_stop_token_ids) | set(eos_token_ids))
    return []


def seed_to_uint32(seed: int) -> int:
    """Any Python int -> uint32 (identity on [0, 2**32)); wider seeds fold high into low word."""
    s = int(seed) % (1 << 64)
    return (s ^ (s >> 32)) & 0xFFFFFFFF


def bucket_width(n: int, minimum: int) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(n, minimum, 1)
    return 1 << (n - 1).bit_length()


def _bucket_logprobs(k: int, vocab_size: int) -> int:
    if k <= 0:
        return 0
    return min(1 << (k - 1).bit_length(), vocab_size)


def _fill(dst: np.ndarray, row: int, values: Sequence[int] | np.ndarray) -> None:
    values = np.asarray(values, dtype=np.int64)
    dst[row, : values.shape[0]] = values


def _check_ids(name: str, ids: Sequence[int] | np.ndarray, vocab_size: int, row: int) -> None:
    arr = np.asarray(ids, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} of row {row} must be a 1-D sequence of token ids, got shape {arr.shape}."
        )
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        bad = arr[(arr < 0) | (arr >= vocab_size)][0]
        raise ValueError(
            f"{name} of row {row} holds token id {bad}, outside [0, vocab_size={vocab_size})."
        )


def build_sampling_metadata(
    rows: Sequence[SamplingRow], *, vocab_size: int, pad_rows_to: int | None = None
) -> tuple[SamplingMetadata, SamplerFlags]:
    """Pack rows into padded numpy arrays and the static flags that describe them."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be at least 1, got {vocab_size}.")
    num_real = len(rows)
    R = num_real if pad_rows_to is None else pad_rows_to
    if num_real > R:
        raise ValueError(
            f"pad_rows_to={pad_rows_to} is smaller than the number of rows ({num_real})."
        )

    params = [r.params for r in rows]
    greedy = [p.temperature < SAMPLING_EPS for p in params]
    rep_rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    pen_rows = [i for i, p in enumerate(params) if p.uses_penalties]
    bias_rows = [i for i, p in enumerate(params) if p.logit_bias]

    for i, r in enumerate(rows):
        _check_ids("banned_token_ids", r.banned_token_ids, vocab_size, i)
        if r.params.logit_bias:
            _check_ids("logit_bias", list(r.params.logit_bias), vocab_size, i)
    for i in pen_rows:
        _check_ids("output_token_ids", rows[i].output_token_ids, vocab_size, i)
        if rows[i].num_pending_tokens:
            raise ValueError(
                f"row {i} uses penalties but {rows[i].num_pending_tokens} of its output tokens "
                "are still in flight: its token history is incomplete"
            )
    for i in rep_rows:
        _check_ids("prompt_token_ids", rows[i].prompt_token_ids, vocab_size, i)

    def width(row_ids: list[int], lengths, minimum: int) -> int:
        if not row_ids:
            return 0
        return bucket_width(max(lengths(i) for i in row_ids), minimum)

    B = width(bias_rows, lambda i: len(params[i].logit_bias), MIN_ID_WIDTH)
    ban_rows = [i for i, r in enumerate(rows) if len(r.banned_token_ids)]
    Bn = width(ban_rows, lambda i: len(rows[i].banned_token_ids), MIN_ID_WIDTH)
    Lo = width(pen_rows, lambda i: len(rows[i].output_token_ids), MIN_HISTORY_WIDTH)
    Lp = width(rep_rows, lambda i: len(rows[i].prompt_token_ids), MIN_HISTORY_WIDTH)

    n = num_real

    def column(values, dtype, pad) -> np.ndarray:
        """One value per real row (read in one pass), padding rows set to `pad`."""
        out = np.full(R, pad, dtype)
        out[:n] = np.fromiter(values, dtype, n)
        return out

    temperature = column((p.temperature for p in params), np.float32, 0.0)  # padding: greedy
    top_k = column((p.top_k if 0 < p.top_k < vocab_size else 0 for p in params), np.int32, 0)
    top_p = column((p.top_p for p in params), np.float32, 1.0)
    min_p = column((p.min_p for p in params), np.float32, 0.0)
    presence = column((p.presence_penalty for p in params), np.float32, 0.0)
    frequency = column((p.frequency_penalty for p in params), np.float32, 0.0)
    repetition = column((p.repetition_penalty for p in params), np.float32, 1.0)
    seeds = column((seed_to_uint32(r.seed) for r in rows), np.uint32, 0)
    gen_index = column((len(r.output_token_ids) + r.num_pending_tokens for r in rows), np.int32, 0)
    bias_ids = np.full((R, B), PAD_ID, np.int32)
    bias_values = np.zeros((R, B), np.float32)
    banned = np.full((R, Bn), PAD_ID, np.int32)
    output_ids = np.full((R, Lo), PAD_ID, np.int32)
    prompt_ids = np.full((R, Lp), PAD_ID, np.int32)

    for i in bias_rows:
        _fill(bias_ids, i, list(params[i].logit_bias.keys()))
        bias_values[i, : len(params[i].logit_bias)] = list(params[i].logit_bias.values())
    for i in ban_rows:
        _fill(banned, i, rows[i].banned_token_ids)
    if Lo:
        for i in pen_rows:
            _fill(output_ids, i, rows[i].output_token_ids)
    if Lp:
        for i in rep_rows:
            _fill(prompt_ids, i, rows[i].prompt_token_ids)
    num_logprobs = max(
        (vocab_size if p.logprobs == -1 else p.logprobs for p in params if p.logprobs is not None),
        default=0,
    )

    mask_rows = [i for i, r in enumerate(rows) if r.allowed_bitmask is not None]
    W = (vocab_size + 31) // 32 if mask_rows else 0
    allowed = np.full((R, W), -1, np.int32)
    for i in mask_rows:
        mask = np.asarray(rows[i].allowed_bitmask)
        if mask.shape != (W,) or mask.dtype != np.int32:
            raise ValueError(
                f"allowed_bitmask of row {i} must be int32 [{W}], got {mask.dtype} {mask.shape}"
            )
        allowed[i] = mask

    random_rows = [p for p, g in zip(params, greedy) if not g]
    flags = SamplerFlags(
        all_greedy=not random_rows,
        any_top_k=any(0 < p.top_k < vocab_size for p in random_rows),
        any_top_p=any(p.top_p < 1.0 for p in random_rows),
        any_min_p=any(p.min_p > 0.0 for p in random_rows),
        any_penalties=bool(pen_rows),
        any_logit_bias=bool(bias_rows),
        any_structured=bool(mask_rows),
        num_logprobs=_bucket_logprobs(num_logprobs, vocab_size),
    )
    md = SamplingMetadata(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        presence_penalty=presence,
        frequency_penalty=frequency,
        repetition_penalty=repetition,
        seeds=seeds,
        gen_index=gen_index,
        logit_bias_ids=bias_ids,
        logit_bias_values=bias_values,
        banned_ids=banned,
        output_token_ids=output_ids,
        prompt_token_ids=prompt_ids,
        allowed_bitmask=allowed,
    )
    return md, flags
