"""The model step as a library: a pure function over pytrees that works inside your own jax.jit."""

import jax.numpy as jnp

from jaxllm.model_loader import load_model
from jaxllm.models.batch import make_kv_cache
from jaxllm.models.step import make_step, prefill_batch

m = load_model("smollm2-135m", dtype="float32")
ids = m.tokenizer.encode("The capital of France is")
batch, num_blocks = prefill_batch([ids], block_size=16)  # a ragged StepBatch of one prompt
cache = make_kv_cache(m.config, num_blocks, block_size=16)  # K and V: [L, blocks, Hkv, 16, Dh]
step = make_step(m.config, backend="reference")  # jitted, the KV cache donated
cache, logits = step(m.params, cache, batch)  # logits [R, V] at batch.logits_indices
# prefill_batch asks for every prompt position's logits: the last row predicts the next token
next_id = int(jnp.argmax(logits[-1]))
print(logits.shape, repr(m.tokenizer.decode([next_id])))
