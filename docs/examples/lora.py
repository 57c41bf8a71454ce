"""LoRA adapters: one base model, several PEFT adapters in one batch, with `LoRARequest`."""

import tempfile

from jaxllm import LLM, LoRARequest, SamplingParams
from jaxllm.benchmarks.lora import write_random_adapter

llm = LLM("smollm2-135m", max_model_len=512, enable_lora=True, max_loras=2, max_lora_rank=16)
# stand-ins for real fine-tunes: PEFT folders (adapter_config.json + adapter_model.safetensors)
tmp = tempfile.mkdtemp()
config = llm.llm_engine.model_config
sql = LoRARequest("sql", 1, write_random_adapter(f"{tmp}/sql", config, 8, seed=1, b_std=0.3))
chat = LoRARequest("chat", 2, write_random_adapter(f"{tmp}/chat", config, 16, seed=2, b_std=0.3))

prompts = ["The capital of France is", "The capital of France is", "The capital of France is"]
params = SamplingParams(temperature=0.0, max_tokens=8)
# one adapter per prompt (None: the base model); they run in the same steps
outs = llm.generate(prompts, params, lora_request=[None, sql, chat])
for lora, out in zip(["base", "sql", "chat"], outs):
    print(lora, repr(out.outputs[0].text))
