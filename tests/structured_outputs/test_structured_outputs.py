"""Structured outputs through the engine on SmolLM2 (the built-in GGUF): every output matches its
grammar (JSON schemas validated with `jsonschema`, regex and choice exactly), greedy decoding under
a grammar equals unconstrained greedy wherever the unconstrained argmax is allowed, and malformed
specs are ValueErrors naming the problem. Also n > 1, async scheduling with chunked prefill and
preemption, and rows without a grammar in the same batch left unchanged.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from jaxllm import LLM, SamplingParams
from jaxllm.structured_outputs import StructuredOutputsParams

# ten schemas of increasing difficulty; bounded strings and numbers so that a 135M model closes
# them within the token budget. Objects say `additionalProperties: false` (as OpenAI's strict
# schemas must): otherwise JSON Schema allows any other key, and the model adds some.
SCHEMAS = [
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 18, "maximum": 99}},
        "required": ["age"],
    },
    {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
    },
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "score": {"type": "number", "minimum": 0, "maximum": 10},
        },
        "required": ["name", "score"],
    },
    {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 8},
                "minItems": 2,
                "maxItems": 3,
            }
        },
        "required": ["tags"],
    },
    {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": 9},
            "nick": {"type": "string", "maxLength": 6},
        },
        "required": ["id"],  # nick optional
    },
    {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "first": {"type": "string", "maxLength": 10},
                    "last": {"type": "string", "maxLength": 10},
                },
                "required": ["first", "last"],
            }
        },
        "required": ["person"],
    },
    {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["x"],
        },
        "minItems": 1,
        "maxItems": 3,
    },
    {
        "type": "object",
        "properties": {
            "kind": {"enum": ["circle", "square"]},
            "size": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 9}, {"type": "null"}]},
        },
        "required": ["kind", "size"],
    },
    {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": -9, "maximum": 9},
                    "y": {"type": "integer", "minimum": -9, "maximum": 9},
                },
                "required": ["x", "y"],
            }
        },
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"],
    },
]


def _closed(schema):
    """`schema` with additionalProperties false on every object."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if schema.get("type") == "object":
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [_closed(v) for v in schema]
    return schema


SCHEMAS = [_closed(s) for s in SCHEMAS]


@pytest.fixture(scope="module")
def llm():
    return LLM("smollm2-135m", max_model_len=512, max_num_seqs=16)


def _chat(llm, text: str) -> str:
    msgs = [{"role": "user", "content": text}]
    return llm.get_tokenizer().apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def _greedy(so=None, max_tokens=80, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, structured_outputs=so, **kw)


def test_json_schemas_validate(llm):
    prompt = _chat(llm, "Answer with a JSON value.")
    params = [_greedy(StructuredOutputsParams(json=s)) for s in SCHEMAS]
    outs = llm.generate([prompt] * len(SCHEMAS), params, use_tqdm=False)
    for schema, out in zip(SCHEMAS, outs):
        o = out.outputs[0]
        assert o.finish_reason == "stop", (schema, o.text)
        jsonschema.validate(json.loads(o.text), schema)


def test_regex_choice_and_json_object(llm):
    prompt = _chat(llm, "What is the capital of France? Also give a phone number.")
    so = [
        StructuredOutputsParams(regex=r"[0-9]{3}-[0-9]{4}"),
        StructuredOutputsParams(choice=["Paris", "London", "Rome"]),
        StructuredOutputsParams(json_object=True),
        StructuredOutputsParams(grammar='root ::= "yes" | "no"'),  # GBNF
    ]
    outs = [o.outputs[0].text for o in llm.generate([prompt] * 4, [_greedy(s) for s in so])]
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", outs[0])
    assert outs[1] in ("Paris", "London", "Rome")
    assert isinstance(json.loads(outs[2]), dict)
    assert outs[3] in ("yes", "no")


def test_grammar_that_allows_the_greedy_argmax_changes_nothing(llm):
    """A grammar allowing the unconstrained greedy text as a prefix (then anything): every argmax
    is allowed, so the constrained greedy tokens equal the unconstrained ones, and a row without
    a grammar in the same batch is unchanged."""
    prompt = _chat(llm, "Give me a person as JSON with name and age.")
    free = llm.generate([prompt], _greedy(max_tokens=40), use_tqdm=False)[0].outputs[0]
    prefix = free.text[: len(free.text) // 2]
    lark = f"start: {json.dumps(prefix)} /(.|\\n)*/\n"
    so = StructuredOutputsParams(grammar=lark)
    outs = llm.generate([prompt, prompt], [_greedy(so, 40), _greedy(max_tokens=40)])
    assert outs[0].outputs[0].token_ids == free.token_ids
    assert outs[1].outputs[0].token_ids == free.token_ids


def test_n_samples_each_follow_the_grammar(llm):
    schema = SCHEMAS[3]
    params = SamplingParams(
        n=3,
        temperature=0.8,
        seed=1,
        max_tokens=80,
        structured_outputs=StructuredOutputsParams(json=schema),
    )
    out = llm.generate([_chat(llm, "A JSON person.")], params, use_tqdm=False)[0]
    assert len(out.outputs) == 3
    for o in out.outputs:
        jsonschema.validate(json.loads(o.text), schema)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (dict(regex="(a"), "invalid regex"),
        (dict(json={"type": "nonsense"}), "invalid json"),
        (dict(grammar="start: (("), "invalid grammar"),
    ],
)
def test_malformed_specs_are_value_errors(llm, spec, message):
    params = _greedy(StructuredOutputsParams(**spec))
    with pytest.raises(ValueError, match=message):
        llm.generate(["hi"], params, use_tqdm=False)
    with pytest.raises(ValueError, match="exactly one of"):
        StructuredOutputsParams(regex="a", choice=["a"])


def test_async_scheduling_chunked_prefill_and_preemption():
    """A cache too small for the batch and a 32-token budget, asynchronous scheduling: every
    output still validates (grammar rows resolve before the next step is scheduled)."""
    llm = LLM(
        "smollm2-135m",
        max_model_len=160,
        max_num_seqs=8,
        max_num_batched_tokens=32,
        num_gpu_blocks_override=12,
        async_scheduling=True,
    )
    prompt = _chat(llm, "Answer with a JSON value, please, as briefly as you can.")
    params = [_greedy(StructuredOutputsParams(json=s), 60) for s in SCHEMAS[:6]]
    outs = llm.generate([prompt] * 6, params, use_tqdm=False)
    for schema, out in zip(SCHEMAS, outs):
        jsonschema.validate(json.loads(out.outputs[0].text), schema)
    assert llm.llm_engine.scheduler.num_preemptions_total > 0
