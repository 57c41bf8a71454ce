"""`StructuredOutputsParams`: what a request's output must match (vLLM's names; host side, no
JAX, no grammar library).

Exactly one of `json` (a JSON schema, as a dict or its JSON text), `regex`, `choice` (a list of
strings: the output is one of them), `grammar` (a Lark grammar, or a GBNF one as llama.cpp
writes them), `json_object=True` (any JSON object) or `structural_tag` (not supported: an error)
is set. `disable_any_whitespace` keeps JSON output compact (no whitespace between tokens).
`SamplingParams(structured_outputs=...)` carries it; jaxllm.structured_outputs.grammar compiles it
into the token masks the sampler applies.
"""

from __future__ import annotations

import json as json_lib
from dataclasses import dataclass
from typing import Any

KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


@dataclass(frozen=True)
class StructuredOutputsParams:
    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        set_kinds = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(set_kinds) != 1:
            raise ValueError(
                "structured_outputs must set exactly one of "
                + ", ".join(KINDS)
                + f"; got {set_kinds or 'none'}"
            )
        if self.structural_tag is not None:
            raise ValueError("structured_outputs.structural_tag is not supported by jaxllm")
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(
                f"structured_outputs.json must be a JSON schema (a dict or its JSON text), got "
                f"{type(self.json).__name__}"
            )
        if isinstance(self.json, str):
            try:
                parsed = json_lib.loads(self.json)
            except ValueError as e:
                raise ValueError(f"structured_outputs.json is not valid JSON: {e}") from e
            if not isinstance(parsed, (dict, bool)):
                raise ValueError("structured_outputs.json must be a JSON schema object")
        if self.regex is not None and not isinstance(self.regex, str):
            raise ValueError("structured_outputs.regex must be a string")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise ValueError("structured_outputs.grammar must be a string")
        if self.choice is not None:
            ok = isinstance(self.choice, (list, tuple)) and all(
                isinstance(c, str) for c in self.choice
            )
            if not ok or not self.choice:
                raise ValueError("structured_outputs.choice must be a non-empty list of strings")
            object.__setattr__(self, "choice", list(self.choice))

    @property
    def kind(self) -> str:
        """Which of KINDS is set."""
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    def cache_key(self) -> tuple:
        """A hashable key of what the grammar depends on (equal specs share one compilation)."""
        spec: Any = getattr(self, self.kind)
        if isinstance(spec, dict):
            spec = json_lib.dumps(spec, sort_keys=True)
        elif isinstance(spec, list):
            spec = tuple(spec)
        return (self.kind, spec, self.disable_any_whitespace)

    @classmethod
    def from_dict(cls, value: Any) -> StructuredOutputsParams:
        """From a mapping of its fields (the server's `structured_outputs` body field); unknown
        keys are an error."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError("structured_outputs must be an object")
        unknown = sorted(set(value) - set(KINDS) - {"disable_any_whitespace"})
        if unknown:
            raise ValueError(f"structured_outputs has unknown fields {unknown}")
        return cls(**value)
