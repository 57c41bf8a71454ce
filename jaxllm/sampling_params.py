"""vLLM-compatible sampling parameters (host side; never imports JAX).

`SamplingParams` carries vLLM's field names and defaults so that a vLLM user can switch by changing
an import. It is validated on construction: every bad value raises a `ValueError` whose message
names the field and the value. The device-side view of a batch of these is
`jaxllm.sampling_metadata.SamplingMetadata`.

Normalizations done in `__post_init__` (as vLLM does):
  * `stop` None -> [], a str -> [str]; `stop_token_ids` None -> [], duplicates dropped.
  * `seed == -1` -> None; `top_k == -1` -> 0 (both spellings mean "disabled").
  * `logit_bias` keys given as strings (JSON) are converted to int; values to float.
  * `0 < temperature < 0.01` is raised to 0.01 (avoids inf/nan in float32 logits).
  * greedy (`temperature < 1e-5`) resets top_p=1, top_k=0, min_p=0, and requires n == 1.
"""

from __future__ import annotations

import copy
import enum
import logging
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any

# re-exported (`as`): vLLM users import it from here
from jaxllm.structured_outputs.params import StructuredOutputsParams as StructuredOutputsParams

logger = logging.getLogger(__name__)

SAMPLING_EPS = 1e-5  # temperatures below this mean greedy
MIN_RANDOM_TEMPERATURE = 1e-2  # smaller positive temperatures are raised to this
MAX_LOGIT_BIAS = 100.0


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _token_id_from_key(key: Any) -> int | None:
    """An int token id from a logit_bias key (int, or a decimal string as JSON gives); else None."""
    if _is_int(key):
        return int(key)
    if isinstance(key, str):
        text = key.strip()
        if re.fullmatch(r"-?[0-9]+", text):
            return int(text)
    return None


def _check_number(name: str, value: Any) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    number: float = value
    return number


def _check_int(name: str, value: Any) -> int:
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    integer: int = value
    return integer


@dataclass
class SamplingParams:
    """Sampling parameters for text generation (OpenAI completions semantics, vLLM field names)."""

    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1, normalized to 0) = disabled
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16  # None = up to max_model_len
    min_tokens: int = 0
    logprobs: int | None = None  # -1 = full vocabulary
    prompt_logprobs: int | None = None  # -1 = full vocabulary
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    truncate_prompt_tokens: int | None = None
    # the output must match this grammar (a StructuredOutputsParams, or a dict of its fields)
    structured_outputs: StructuredOutputsParams | None = None

    # Derived; not constructor arguments.
    output_text_buffer_length: int = field(default=0, init=False, compare=False)
    _eos_token_id: int | None = field(default=None, init=False, repr=False, compare=False)
    _all_stop_token_ids: set[int] = field(
        default_factory=set, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.structured_outputs is not None:
            self.structured_outputs = StructuredOutputsParams.from_dict(self.structured_outputs)
        stop, stop_token_ids = self._normalize()
        self._verify_args(stop, stop_token_ids)
        if self.temperature < SAMPLING_EPS:
            # Zero temperature means greedy: the truncation knobs have no effect.
            self.top_p = 1.0
            self.top_k = 0
            self.min_p = 0.0
            if self.n > 1:
                raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")
        # Number of characters to hold back while streaming, until stop strings are ruled out.
        if stop and not self.include_stop_str_in_output:
            self.output_text_buffer_length = max(len(s) for s in stop) - 1
        self._all_stop_token_ids = set(stop_token_ids)

    # ------------------------------------------------------------------ normalization / checks

    def _normalize(self) -> tuple[list[str], list[int]]:
        """Normalize fields in place; return `stop` and `stop_token_ids`, now lists."""
        _check_number("temperature", self.temperature)
        if 0 < self.temperature < MIN_RANDOM_TEMPERATURE:
            logger.warning(
                "temperature %s is below %s, which may give inf/nan logits; raised to %s.",
                self.temperature,
                MIN_RANDOM_TEMPERATURE,
                MIN_RANDOM_TEMPERATURE,
            )
            self.temperature = MIN_RANDOM_TEMPERATURE
        if self.seed == -1:
            self.seed = None
        if _is_int(self.top_k) and self.top_k == -1:
            self.top_k = 0

        stop: list[str]
        if self.stop is None:
            stop = []
        elif isinstance(self.stop, str):
            stop = [self.stop]
        elif isinstance(self.stop, (list, tuple)):
            stop = list(self.stop)
        else:
            raise ValueError(f"stop must be a str or a list of str, got {self.stop!r}.")
        self.stop = stop

        stop_token_ids: list[int]
        if self.stop_token_ids is None:
            stop_token_ids = []
        elif isinstance(self.stop_token_ids, (list, tuple)):
            stop_token_ids = list(dict.fromkeys(self.stop_token_ids))
        else:
            raise ValueError(f"stop_token_ids must be a list of int, got {self.stop_token_ids!r}.")
        self.stop_token_ids = stop_token_ids

        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise ValueError(
                    f"logit_bias must be a dict of token id -> bias, got {self.logit_bias!r}."
                )
            converted: dict[int, float] = {}
            for key, bias in self.logit_bias.items():
                token_id = _token_id_from_key(key)
                if token_id is None:
                    raise ValueError(f"logit_bias keys must be integer token ids, got {key!r}.")
                converted[token_id] = bias
            self.logit_bias = converted
        return stop, stop_token_ids

    def _verify_args(self, stop: list[str], stop_token_ids: list[int]) -> None:
        """Check every field; `stop` and `stop_token_ids` are the lists `_normalize` returned."""
        _check_int("n", self.n)
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if self.best_of is not None:
            _check_int("best_of", self.best_of)
            if self.best_of < self.n:
                raise ValueError(
                    f"best_of must be greater than or equal to n={self.n}, got {self.best_of}."
                )
        for name in ("presence_penalty", "frequency_penalty"):
            value = _check_number(name, getattr(self, name))
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}.")
        if _check_number("repetition_penalty", self.repetition_penalty) <= 0.0:
            raise ValueError(
                f"repetition_penalty must be greater than zero, got {self.repetition_penalty}."
            )
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < _check_number("top_p", self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if _check_int("top_k", self.top_k) < 0:
            raise ValueError(f"top_k must be 0 or -1 (disabled), or at least 1, got {self.top_k}.")
        if not 0.0 <= _check_number("min_p", self.min_p) <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.seed is not None:
            _check_int("seed", self.seed)
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens)
            if self.max_tokens < 1:
                raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if _check_int("min_tokens", self.min_tokens) < 0:
            raise ValueError(
                f"min_tokens must be greater than or equal to 0, got {self.min_tokens}."
            )
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                f"got {self.min_tokens}."
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < -1):
                raise ValueError(
                    f"{name} must be a non-negative integer or -1 (full vocabulary), got {value!r}."
                )
        for s in stop:
            if not isinstance(s, str):
                raise ValueError(f"stop must contain only strings, got {s!r}.")
            if not s:
                raise ValueError("stop cannot contain an empty string.")
        if stop and not self.detokenize:
            raise ValueError("stop strings are only supported when detokenize is True.")
        for t in stop_token_ids:
            if not _is_int(t) or t < 0:
                raise ValueError(
                    f"stop_token_ids must contain only non-negative integers, got {t!r}."
                )
        if self.logit_bias is not None:
            for token_id, bias in self.logit_bias.items():
                if token_id < 0:
                    raise ValueError(f"logit_bias token ids must be non-negative, got {token_id}.")
                _check_number(f"logit_bias[{token_id}]", bias)
                if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                    raise ValueError(
                        f"logit_bias values must be in [-100, 100], got {bias} "
                        f"for token {token_id}."
                    )
        if self.truncate_prompt_tokens is not None:
            _check_int("truncate_prompt_tokens", self.truncate_prompt_tokens)
            if self.truncate_prompt_tokens < 1:
                raise ValueError(
                    f"truncate_prompt_tokens must be at least 1, got {self.truncate_prompt_tokens}."
                )

    # ------------------------------------------------------------------ engine helpers

    def update_from_generation_config(
        self, generation_config: dict[str, Any], eos_token_id: int | None = None
    ) -> None:
        """Record the model's eos id(s) (engine calls this once per request).

        The primary `eos_token_id` is remembered for stopping (unless ignore_eos) and joins
        `all_stop_token_ids` (the ids banned while output < min_tokens). Extra eos ids from the
        generation config also become `stop_token_ids` unless ignore_eos.
        """
        if not self.ignore_eos:
            self._eos_token_id = eos_token_id
        if eos_token_id is not None:
            self._all_stop_token_ids.add(eos_token_id)
        extra = generation_config.get("eos_token_id")
        if extra is None:
            return
        extra_ids = {extra} if _is_int(extra) else set(extra)
        extra_ids.discard(eos_token_id)
        if extra_ids:
            self._all_stop_token_ids.update(extra_ids)
            if not self.ignore_eos:
                self.stop_token_ids = list(
                    dict.fromkeys([*(self.stop_token_ids or []), *sorted(extra_ids)])
                )

    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < SAMPLING_EPS:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def all_stop_token_ids(self) -> set[int]:
        """stop_token_ids plus eos ids: what min_tokens bans until enough tokens are generated."""
        return self._all_stop_token_ids

    @property
    def uses_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    def clone(self) -> SamplingParams:
        return copy.deepcopy(self)


# HF generation_config key -> SamplingParams keyword: the sampling settings a checkpoint
# recommends, which `LLM.get_default_sampling_params()` and `jaxllm generate` start from (vLLM's
# `--generation-config auto`).
GENERATION_CONFIG_SAMPLING_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def sampling_defaults_from_generation_config(generation_config: dict[str, Any]) -> dict[str, Any]:
    """The SamplingParams keywords that a model's generation_config sets (unset keys are left out).

    `{"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 256}` ->
    `{"temperature": 0.6, "top_p": 0.9, "max_tokens": 256}`.
    """
    return {
        keyword: generation_config[key]
        for key, keyword in GENERATION_CONFIG_SAMPLING_KEYS.items()
        if generation_config.get(key) is not None
    }
