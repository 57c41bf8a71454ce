"""GPU check (issue 9, session 4): the asynchronous engine gives the synchronous engine's tokens.

`dummy:llama-3.2-1b` in bf16, 12 random prompts of 5-300 tokens, 1-39 new tokens each (one seeded
sampled request), with the default token budget and with 128 (chunked prefill); prints how many
requests are token-equal. Usage: PYTHONPATH=. python scripts/gpu_async_equality.py
"""

import numpy as np

from jaxllm import LLM, SamplingParams
from jaxllm.model_loader import load_model

m = load_model("dummy:llama-3.2-1b", dtype="bfloat16")
rng = np.random.default_rng(0)
prompts = [rng.integers(0, 32000, int(n)).tolist() for n in rng.integers(5, 300, 12)]
sps = [
    SamplingParams(temperature=0.0, max_tokens=int(k), ignore_eos=True)
    for k in rng.integers(1, 40, 12)
]
sps[3] = SamplingParams(temperature=0.9, seed=7, max_tokens=25, ignore_eos=True)
res = {}
for name, kw in (
    ("sync", {}),
    ("async", {"async_scheduling": True}),
    ("sync_small", {"max_num_batched_tokens": 128}),
    ("async_small", {"async_scheduling": True, "max_num_batched_tokens": 128}),
):
    llm = LLM(m, max_model_len=512, max_num_seqs=16, gpu_memory_utilization=0.3, **kw)
    res[name] = [o.outputs[0].token_ids for o in llm.generate(prompts, sps, use_tqdm=False)]
    del llm
for a, b in (("async", "sync"), ("async_small", "sync_small")):
    same = sum(x == y for x, y in zip(res[a], res[b]))
    print(f"{a} vs {b}: {same}/12 requests token-equal; lengths {[len(x) for x in res[a]]}")
