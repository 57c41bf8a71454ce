"""Runs in a subprocess with 2 virtual CPU devices (XLA_FLAGS set before jax is imported) for
tests/models/test_model_zoo_vs_hf.py: greedy tokens of each model folder at tensor parallel 2.

    python tests/models/zoo_tp_worker.py SPEC_JSON OUT.json

SPEC_JSON: {"prompts": [[ids]], "new": N, "models": {name: folder}}; OUT.json: {name: {"tp": 2,
"tokens": [[ids]]}}.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402


def main(spec_json: str, out_path: str) -> None:
    from jaxllm import LLM, SamplingParams

    spec = json.loads(spec_json)
    params = SamplingParams(temperature=0.0, max_tokens=spec["new"], min_tokens=spec["new"])
    result = {}
    for name, folder in spec["models"].items():
        llm = LLM(
            folder,
            dtype="float32",
            tensor_parallel_size=2,
            max_model_len=96,
            max_num_seqs=6,
            max_num_batched_tokens=32,
            num_gpu_blocks_override=24,
            compilation_cache_dir="off",
        )
        outs = llm.generate(spec["prompts"], params, use_tqdm=False)
        result[name] = {
            "tp": int(llm.llm_engine.runner.mesh.shape["model"]),
            "tokens": [o.outputs[0].token_ids for o in outs],
        }
        del llm
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
