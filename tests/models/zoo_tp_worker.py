"""Runs in a subprocess with virtual CPU devices (XLA_FLAGS set before jax is imported) for
the model tests (test_model_zoo_vs_hf.py, test_moe_vs_hf.py): greedy tokens of each model folder
under tensor (or expert) parallelism.

    python tests/models/zoo_tp_worker.py SPEC_JSON OUT.json

SPEC_JSON: {"prompts": [[ids]], "new": N, "runs": [{"models": {name: folder}, "tp": tp,
"enable_expert_parallel": bool}, ...]}, or one run's keys at the top level ("tp" default 2,
"enable_expert_parallel" default false); the process has as many devices as the largest tp.
OUT.json: one {name: {"tp", "expert_parallel", "tokens": [[ids]]}} per run (the top-level form:
that one mapping).
"""

from __future__ import annotations

import json
import os
import sys


def _runs(spec: dict) -> list[dict]:
    return spec.get("runs") or [spec]


DEVICES = (
    max(int(r.get("tp", 2)) for r in _runs(json.loads(sys.argv[1]))) if len(sys.argv) > 1 else 2
)
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def run(spec: dict, run: dict) -> dict:
    from jaxllm import LLM, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=spec["new"], min_tokens=spec["new"])
    result = {}
    for name, folder in run["models"].items():
        llm = LLM(
            folder,
            dtype="float32",
            tensor_parallel_size=int(run.get("tp", 2)),
            enable_expert_parallel=bool(run.get("enable_expert_parallel", False)),
            max_model_len=96,
            max_num_seqs=6,
            max_num_batched_tokens=32,
            num_gpu_blocks_override=24,
            compilation_cache_dir="off",
        )
        outs = llm.generate(spec["prompts"], params, use_tqdm=False)
        result[name] = {
            "tp": int(llm.llm_engine.runner.mesh.shape["model"]),
            "expert_parallel": llm.llm_engine.config.model.expert_parallel,
            "tokens": [o.outputs[0].token_ids for o in outs],
        }
        del llm
    return result


def main(spec_json: str, out_path: str) -> None:
    spec = json.loads(spec_json)
    results = [run(spec, r) for r in _runs(spec)]
    with open(out_path, "w") as f:
        json.dump(results if "runs" in spec else results[0], f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
