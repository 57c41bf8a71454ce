"""One process of a two-process CPU run over loopback (tests/parallel/test_multihost.py).

    python multihost_worker.py PORT PROCESS_ID LLAMA_DIR OUT.json

Each process has one CPU device; the LLM runs tensor parallel over both (tp=2). Process 0 leads
and writes the greedy tokens; process 1 follows and writes how many steps it replayed.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ["JAX_PLATFORMS"] = "cpu"

from jaxllm.parallel import multihost  # noqa: E402

PROMPTS = [[5, 17, 99, 3, 250], list(range(40, 61)), [7] * 3 + list(range(100, 130))]


def main() -> None:
    port, pid, folder, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ[multihost.COORDINATOR_ENV] = f"127.0.0.1:{port}"
    os.environ[multihost.NUM_PROCESSES_ENV] = "2"
    os.environ[multihost.PROCESS_ID_ENV] = str(pid)
    multihost.initialize()
    import jax

    from jaxllm import LLM, SamplingParams

    llm = LLM(
        folder,
        tensor_parallel_size=2,
        num_gpu_blocks_override=64,
        max_model_len=128,
        max_num_seqs=8,
        compilation_cache_dir="off",
    )
    spec = llm.llm_engine.runner.params["layers"]["self_attn"]["q_proj"]["kernel"].sharding
    record = {
        "process": jax.process_index(),
        "devices": len(jax.devices()),
        "local_devices": len(jax.local_devices()),
        "q_devices": len(spec.device_set),
    }
    if multihost.is_leader():
        sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
        record["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        multihost.stop_followers()
    else:
        record["steps"] = multihost.follow(llm.llm_engine)
    with open(out, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
