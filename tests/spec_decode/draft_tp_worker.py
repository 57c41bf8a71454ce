"""Runs in a subprocess with 2 virtual CPU devices (XLA_FLAGS set before jax is imported) for
tests/spec_decode/test_draft_model.py: greedy tokens of a tiny model at tensor_parallel_size 2,
without speculation and with itself as the draft model on the same mesh; writes them and the
acceptance rate as JSON.

    python tests/spec_decode/draft_tp_worker.py OUT.json MODEL_DIR
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

from jaxllm import LLM, SamplingParams  # noqa: E402


def main(out: str, model: str) -> None:
    engine = dict(max_model_len=64, tensor_parallel_size=2, num_gpu_blocks_override=16)
    prompts = [{"prompt_token_ids": list(range(10, 10 + n))} for n in (5, 21)]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)

    def tokens(llm: LLM) -> list[list[int]]:
        return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]

    plain = tokens(LLM(model, **engine))
    spec = {"method": "draft_model", "model": model, "num_speculative_tokens": 3}
    llm = LLM(model, speculative_config=spec, **engine)
    result = {
        "plain": plain,
        "spec": tokens(llm),
        "draft_devices": len(llm.llm_engine.proposer.runner.mesh.devices.flat),
        "acceptance_rate": llm.llm_engine.spec_stats.acceptance_rate,
    }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
