"""SamplingParams: vLLM's names and defaults, validated when built (no model needed)."""

from jaxllm import SamplingParams

params = SamplingParams(temperature=0.7, top_k=50, min_p=0.05, max_tokens=64, stop=["###"])
print(params.temperature, params.top_k, params.max_tokens, params.stop)

# -1 means "no top-k" and is normalized to 0, as in vLLM.
print(SamplingParams(top_k=-1).top_k)

# Bad values raise a ValueError that names the field.
try:
    SamplingParams(top_p=1.5)
except ValueError as err:
    print("ValueError:", err)
