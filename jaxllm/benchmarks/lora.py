"""Multi-LoRA throughput: output tok/s with 1, 4 and 16 adapters spread over the requests against
the base model alone, in one run, on the same requests.

Each case is its own engine (`max_loras` = its adapter count, so every adapter of a batch has a
slot): `base` has no LoRA at all (nothing traced), the others serve random rank-`--rank` adapters
on every projection (q/k/v/o/gate/up/down, PEFT's layout written with safetensors) with request i
on adapter i mod n. Every case runs the same N prompts (greedy, `--max-tokens` each, eos ignored,
all submitted at once through `LLM.generate`) once to compile and once timed. The table gives the
wall time, output tok/s and the overhead against `base`.

    python -m jaxllm.benchmarks.lora --num-prompts 64 --max-tokens 32 --rank 16
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

PROJ = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def write_random_adapter(
    folder: str, model_config, rank: int, seed: int, b_std: float = 0.02
) -> str:
    """A PEFT adapter folder of random A and B (B's std `b_std`) on every projection."""
    from safetensors.numpy import save_file

    from jaxllm.lora.peft_adapter import projection_shapes

    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(model_config.num_hidden_layers):
        for proj, (d_in, d_out) in projection_shapes(model_config).items():
            key = f"base_model.model.model.layers.{layer}.{PROJ[proj]}.{proj}"
            tensors[f"{key}.lora_A.weight"] = (
                rng.standard_normal((rank, d_in)) / np.sqrt(d_in)
            ).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((d_out, rank)) * b_std).astype(
                np.float32
            )
    os.makedirs(folder, exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(PROJ)}
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    return folder


def run(
    model: str, num_prompts: int, max_tokens: int, rank: int, counts: list[int], engine_kwargs
) -> list[dict]:
    from jaxllm import LLM, LoRARequest, SamplingParams
    from jaxllm.model_loader import load_model

    loaded = load_model(model)
    tok = loaded.tokenizer
    text = "Write a short story about a lighthouse keeper and the sea."
    prompts = [tok.encode(f"{i}. {text}") for i in range(num_prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [
            write_random_adapter(os.path.join(tmp, f"a{i}"), loaded.config, rank, i)
            for i in range(max(counts, default=0))
        ]
        for n in [0, *counts]:
            kwargs = dict(engine_kwargs)
            if n:
                kwargs.update(enable_lora=True, max_loras=n, max_lora_rank=rank)
            llm = LLM(loaded, **kwargs)
            loras = (
                None
                if not n
                else [LoRARequest(f"a{i % n}", i % n + 1, paths[i % n]) for i in range(num_prompts)]
            )
            llm.generate(prompts, params, lora_request=loras, use_tqdm=False)  # compile
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
            wall = time.perf_counter() - t0
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            rows.append(
                dict(case="base" if not n else f"{n} adapters", wall_s=wall, tok_s=tokens / wall)
            )
            del llm
    base = rows[0]["tok_s"]
    for r in rows:
        r["overhead"] = base / r["tok_s"] - 1.0
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--adapters", default="1,4,16", help="adapter counts, comma-separated")
    p.add_argument("--max-num-seqs", type=int, default=64)
    a = p.parse_args(argv)
    rows = run(
        a.model,
        a.num_prompts,
        a.max_tokens,
        a.rank,
        [int(x) for x in a.adapters.split(",") if x],
        dict(max_num_seqs=a.max_num_seqs, max_model_len=512),
    )
    print("| case | wall s | output tok/s | overhead vs base |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['case']} | {r['wall_s']:.2f} | {r['tok_s']:.1f} | {100 * r['overhead']:+.1f}% |"
        )


if __name__ == "__main__":
    main()
