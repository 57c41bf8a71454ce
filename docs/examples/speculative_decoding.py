"""Speculative decoding with n-gram (prompt lookup) drafts: the same greedy tokens as without."""

from jaxllm import LLM, SamplingParams

# an answer that copies its prompt: prompt lookup drafts it, the model only checks the drafts
code = "def area(width, height):\n    return width * height\n\n\nprint(area(3, 4))\n"
ask = f"Here is a Python file:\n\n```python\n{code}```\n\nRewrite it with `area` renamed to `size`."
messages = [{"role": "user", "content": ask}]
greedy = SamplingParams(temperature=0, max_tokens=48)

llm = LLM(
    "smollm2-135m",
    max_model_len=512,
    speculative_config={"method": "ngram", "num_speculative_tokens": 4},
)
(out,) = llm.chat(messages, greedy)
m = out.metrics  # this request's drafts
print(f"accepted {m.spec_num_accepted_tokens} of {m.spec_num_draft_tokens} draft tokens")
stats = llm.llm_engine.spec_stats  # the engine's counters, over every request so far
print(f"acceptance rate {stats.acceptance_rate:.2f}, by position {stats.accepted_per_position}")

plain = LLM("smollm2-135m", max_model_len=512)  # no speculation
print(plain.chat(messages, greedy)[0].outputs[0].text == out.outputs[0].text)  # True
