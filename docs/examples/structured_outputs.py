"""Structured outputs: a JSON schema and a choice, through `LLM.generate`."""

import json

from jaxllm import LLM, SamplingParams
from jaxllm.sampling_params import StructuredOutputsParams

llm = LLM("smollm2-135m", max_model_len=512)
schema = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "population_millions": {"type": "number", "minimum": 0, "maximum": 50},
    },
    "required": ["city", "population_millions"],
    "additionalProperties": False,
}
messages = [{"role": "user", "content": "What is the largest city of France? Answer in JSON."}]
prompt = llm.get_tokenizer().apply_chat_template(
    messages, tokenize=False, add_generation_prompt=True
)
as_json = SamplingParams(
    temperature=0, max_tokens=64, structured_outputs=StructuredOutputsParams(json=schema)
)
one_of = SamplingParams(
    temperature=0, structured_outputs=StructuredOutputsParams(choice=["Paris", "Lyon", "Nice"])
)
json_out, choice_out = llm.generate([prompt, prompt], [as_json, one_of])
answer = json.loads(json_out.outputs[0].text)  # always parses, and follows the schema
print(answer["city"], choice_out.outputs[0].text)
