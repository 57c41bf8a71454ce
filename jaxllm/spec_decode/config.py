"""`speculative_config`: which proposer and how many draft tokens (host side, no JAX)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

METHODS = ("ngram", "draft_model", "eagle")
# vLLM method names this engine does not run (yet): a clear error, not a silent fallback
UNSUPPORTED_METHODS = ("eagle3", "medusa", "mlp_speculator", "mtp", "suffix")
DEFAULT_PROMPT_LOOKUP_MAX = 5
DEFAULT_PROMPT_LOOKUP_MIN = 1


@dataclass(frozen=True)
class SpeculativeConfig:
    """`method`: "ngram" (the longest suffix n-gram, `prompt_lookup_min` to `prompt_lookup_max`
    tokens, found earlier in the request's tokens proposes what followed it) or "draft_model"
    (`model`, a smaller model with the target's vocabulary, proposes its greedy continuation) or
    "eagle" (`model`, an EAGLE-1 head folder: one decoder layer over the target's features).
    `num_speculative_tokens`: k, the most draft tokens a request verifies a step."""

    method: str
    num_speculative_tokens: int
    prompt_lookup_min: int | None = None
    prompt_lookup_max: int | None = None
    # draft_model: a model name or path, as LLM(model=...) takes; eagle: the head's folder
    model: str | None = None
    draft_dtype: str | None = None  # draft_model, eagle: its dtype (None: the target's)

    def __post_init__(self) -> None:
        if self.method in UNSUPPORTED_METHODS:
            raise ValueError(
                f"speculative method {self.method!r} is not supported; use one of {METHODS}"
            )
        if self.method not in METHODS:
            raise ValueError(f"unknown speculative method {self.method!r}; use one of {METHODS}")
        k = self.num_speculative_tokens
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"num_speculative_tokens must be an int >= 1, got {k!r}")
        if self.method == "ngram":
            if self.model is not None:
                raise ValueError("speculative method 'ngram' takes no model")
            lo, hi = self.ngram_window
            if not 1 <= lo <= hi:
                raise ValueError(
                    f"prompt_lookup_min ({lo}) and prompt_lookup_max ({hi}) must satisfy "
                    "1 <= min <= max"
                )
        else:
            if not self.model:
                raise ValueError(f"speculative method {self.method!r} needs 'model'")
            if self.prompt_lookup_min is not None or self.prompt_lookup_max is not None:
                raise ValueError("prompt_lookup_min/max are settings of method 'ngram'")

    @property
    def needs_target_hidden_states(self) -> bool:
        """Does the proposer read the target's final hidden states (EAGLE's features)? The
        target step then returns them; for the other methods it traces nothing extra."""
        return self.method == "eagle"

    @property
    def ngram_window(self) -> tuple[int, int]:
        """(min, max) n-gram lengths: unset ones default to 1 and 5 (max at least min)."""
        lo = self.prompt_lookup_min
        hi = self.prompt_lookup_max
        if hi is None:
            hi = max(DEFAULT_PROMPT_LOOKUP_MAX, lo or 0)
        if lo is None:
            lo = min(DEFAULT_PROMPT_LOOKUP_MIN, hi)
        return lo, hi

    @classmethod
    def from_value(cls, value: SpeculativeConfig | dict | str | None) -> SpeculativeConfig | None:
        """From `LLM(speculative_config=...)`: a dict (vLLM's keys), its JSON text (the CLI's
        `--speculative-config`), a SpeculativeConfig, or None (off)."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"speculative_config is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise ValueError(
                f"speculative_config must be a dict or JSON object, got {type(value).__name__}"
            )
        d: dict[str, Any] = dict(value)
        if "method" not in d:  # vLLM infers a draft model from `model`
            d["method"] = "draft_model" if d.get("model") else None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"speculative_config has unknown keys {unknown}; known: {sorted(known)}"
            )
        if d.get("method") is None:
            raise ValueError("speculative_config needs 'method' (ngram or draft_model)")
        if "num_speculative_tokens" not in d:
            raise ValueError("speculative_config needs 'num_speculative_tokens'")
        return cls(**d)
