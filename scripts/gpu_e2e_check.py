"""GPU end-to-end check: greedy SmolLM2 (float32) with backend `pallas` equals backend `reference`.

    python scripts/gpu_e2e_check.py MODEL   # MODEL: smollm2-135m or a path to the GGUF file

Prints a line per prompt set and exits non-zero on any mismatch; also times both backends.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def main() -> int:
    from jaxllm import LLM, SamplingParams

    model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    rng = np.random.default_rng(0)
    results = {}
    for backend in ("reference", "pallas"):
        llm = LLM(model, dtype="float32", max_model_len=1024, max_num_seqs=32,
                  max_num_batched_tokens=512, attention_backend=backend)
        tok = llm.get_tokenizer()
        text = ("The history of the city begins with a small settlement by the river, where "
                "farmers and traders met every season to exchange grain, tools and news. ") * 30
        ids = tok.encode(text)
        lens = [10, 400, 37, 16, 17, 120, 64, 250, 11, 90, 33, 180, 48, 15, 300, 75]
        prompts = [{"prompt_token_ids": ids[i * 5 : i * 5 + n]} for i, n in enumerate(lens)]
        prompts += ["The capital of France is", "def quicksort(arr):"]
        sp = SamplingParams(temperature=0.0, max_tokens=64)
        llm.generate(prompts[:2], sp, use_tqdm=False)  # warm-up compile
        t = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        dt = time.perf_counter() - t
        n_out = sum(len(o.outputs[0].token_ids) for o in outs)
        results[backend] = [o.outputs[0].token_ids for o in outs]
        print(f"{backend}: {len(outs)} prompts, {n_out} tokens in {dt:.2f}s ({n_out / dt:.1f} tok/s), "
              f"compilations {llm.llm_engine.runner.num_compilations}", flush=True)
        del llm
    bad = [i for i, (a, b) in enumerate(zip(results["reference"], results["pallas"])) if a != b]
    for i in bad:
        a, b = results["reference"][i], results["pallas"][i]
        j = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"MISMATCH prompt {i}: first difference at token {j}", flush=True)
    print("pallas == reference on all prompts" if not bad else f"{len(bad)} prompts differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
