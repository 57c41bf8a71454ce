"""Talk to `jaxllm serve` with the official `openai` client (pip install openai)."""

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"),
    api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),  # the server's --api-key, if it has one
)
model = client.models.list().data[0].id

completion = client.completions.create(
    model=model, prompt="The capital of France is", max_tokens=8, temperature=0.0
)
print(repr(completion.choices[0].text), completion.usage)

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=8,
    temperature=0.0,
    stream=True,
)
print("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))
