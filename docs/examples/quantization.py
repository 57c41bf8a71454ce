"""Quantized weights: the GGUF's blocks kept as stored, and int8 quantized at load."""

import jax

from jaxllm import LLM, SamplingParams
from jaxllm.model_loader import load_model


def param_mib(loaded) -> float:
    return sum(a.nbytes for a in jax.tree.leaves(loaded.params)) / 2**20


# The built-in SmolLM2 is a Q4_1 GGUF: its blocks stay as they are on the device.
gguf = load_model("smollm2-135m")
print(gguf.config.quantization.method, f"{param_mib(gguf):.1f} MiB")  # gguf 92.1 MiB

# int8: the decoder's linear weights quantized as they load (from the dequantized GGUF here).
int8 = load_model("smollm2-135m", quantization="int8")
print(int8.config.quantization.method, f"{param_mib(int8):.1f} MiB")

llm = LLM(gguf, max_model_len=256)  # LLM("smollm2-135m") loads the same
(out,) = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=8))
print(out.outputs[0].text)
