"""GPU check without model files: greedy tokens of random-weight SmolLM2-135M shapes
(`dummy:smollm2-135m`, float32: D 64, 9 query / 3 KV heads) are equal across the reference, pallas
and cuda attention backends (the engine's whole step: `jaxllm.layers.linear.Linear`, attention,
sampler). Exit status 1 when they differ.

    PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false python scripts/gpu_dense_backends_check.py
"""

import sys

from jaxllm import LLM, SamplingParams

prompts = [
    {"prompt_token_ids": [1 + (7 * i + j) % 200 for j in range(n)]}
    for i, n in enumerate([5, 33, 17, 64, 2, 90])
]
sp = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
res = {}
for backend in ("reference", "pallas", "cuda"):
    llm = LLM(
        "dummy:smollm2-135m",
        dtype="float32",
        max_model_len=256,
        attention_backend=backend,
        num_gpu_blocks_override=128,
    )
    res[backend] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, use_tqdm=False)]
    print(backend, res[backend][:2], flush=True)
    del llm
ok = all(res[b] == res["reference"] for b in ("pallas", "cuda"))
print("EQUAL" if ok else "DIFFER")
sys.exit(0 if ok else 1)
