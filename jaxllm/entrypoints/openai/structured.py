"""Request fields -> `StructuredOutputsParams`, and the server's `--structured-outputs-config`.

A completion or chat request asks for a structured output in one of these forms (at most one; two
or more are a 400 naming them):

- `response_format`: `{"type": "text"}` (nothing), `{"type": "json_object"}` (any JSON object),
  `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}`;
- vLLM's `structured_outputs`: a dict of StructuredOutputsParams fields (`json`, `regex`,
  `choice`, `grammar`, `json_object`, `disable_any_whitespace`);
- vLLM's older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`;
- chat's `tool_choice` "required" or a named function (jaxllm.entrypoints.openai.tool_calls builds
  its schema; the caller passes it here as `tool_schema`).

`guided_decoding_backend` is accepted and ignored: the server's configured backend decides. What
the grammar compiler finds wrong (a malformed schema, regex or grammar) comes back from the
engine as a ValueError when the request is admitted, which the server answers with a 400 naming
the request field the structured output came from.
"""

from __future__ import annotations

from typing import Any

from jaxllm.entrypoints.openai.errors import bad_request
from jaxllm.entrypoints.openai.serve_args import StructuredOutputsConfig
from jaxllm.structured_outputs.params import StructuredOutputsParams

__all__ = ["request_structured_outputs"]


def _forms(req: Any) -> list[tuple[str, dict[str, Any]]]:
    """(request field, StructuredOutputsParams kwargs) of each structured-output form set."""
    forms: list[tuple[str, dict[str, Any]]] = []
    rf = req.response_format
    if rf is not None and rf.type != "text":
        if rf.type == "json_object":
            forms.append(("response_format", {"json_object": True}))
        else:
            spec = rf.json_schema
            if spec is None:
                raise bad_request(
                    "'response_format' of type 'json_schema' needs a 'json_schema' object "
                    '({"name": ..., "schema": {...}}).',
                    "response_format.json_schema",
                )
            schema = spec.json_schema
            if schema is None:  # OpenAI's schema is optional: any JSON object then
                forms.append(("response_format", {"json_object": True}))
            else:
                forms.append(("response_format", {"json": schema}))
    if req.structured_outputs is not None:
        forms.append(("structured_outputs", dict(req.structured_outputs)))
    for name, kind in (
        ("guided_json", "json"),
        ("guided_regex", "regex"),
        ("guided_choice", "choice"),
        ("guided_grammar", "grammar"),
    ):
        value = getattr(req, name)
        if value is not None:
            forms.append((name, {kind: value}))
    return forms


def request_structured_outputs(
    req: Any,
    *,
    defaults: StructuredOutputsConfig | None = None,
    tool_schema: dict[str, Any] | None = None,
) -> tuple[StructuredOutputsParams | None, str | None]:
    """The request's StructuredOutputsParams (None: free text) and the request field it came
    from (to name in errors). `tool_schema`: the JSON schema tool_choice "required" or a named
    function imposes. Conflicting forms and invalid values are 400s naming the field."""
    forms = _forms(req)
    if tool_schema is not None:
        forms.append(("tool_choice", {"json": tool_schema}))
    if not forms:
        return None, None
    if len(forms) > 1:
        names = [name for name, _ in forms]
        raise bad_request(
            "Only one structured output can be requested at a time, got "
            + ", ".join(f"'{n}'" for n in names)
            + ": keep one of them.",
            names[1],
        )
    field, kwargs = forms[0]
    if "disable_any_whitespace" not in kwargs and defaults and defaults.disable_any_whitespace:
        kwargs["disable_any_whitespace"] = True
    try:
        return StructuredOutputsParams.from_dict(kwargs), field
    except (ValueError, TypeError) as e:
        raise bad_request(f"Invalid '{field}': {e}", field) from None
