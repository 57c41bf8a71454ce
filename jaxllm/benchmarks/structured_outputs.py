"""Structured outputs' cost: output tok/s of N concurrent requests under a JSON schema against
the same requests without one, in one run, and the time to first token that grammar compilation
adds on a cold cache.

Three passes over the same N chat prompts (greedy, at most `--max-tokens` each, every request
submitted at once through `LLM.generate`), on one engine:
1. `json cold`: each request with its own JSON schema (N distinct schemas: a property named
   after the request), none compiled before: every request waits for its own compilation;
2. `json warm`: the same N schemas again, now cached;
3. `plain`: no grammar, each request made to generate exactly as many tokens as its `json warm`
   output (min_tokens = max_tokens = that count), so the two passes do the same work.
The table gives the wall time, output tok/s, tok/s relative to `plain`, and the median and p99 of
the time to first token (first token time - arrival). `json cold`'s p99 TTFT minus `json warm`'s
is what a cold grammar cache adds. Outputs are checked against their schema (`jsonschema`).

    python -m jaxllm.benchmarks.structured_outputs --num-prompts 256 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _schema(i: int) -> dict:
    return {
        "type": "object",
        "properties": {
            f"item_{i}": {"type": "string", "maxLength": 24},
            "count": {"type": "integer", "minimum": 0, "maximum": 999},
        },
        "required": [f"item_{i}", "count"],
        "additionalProperties": False,
    }


def run(model: str, num_prompts: int, max_tokens: int, engine_kwargs: dict) -> list[dict]:
    import jsonschema

    from jaxllm import LLM, SamplingParams
    from jaxllm.structured_outputs import StructuredOutputsParams

    llm = LLM(model, **engine_kwargs)
    tok = llm.get_tokenizer()
    msgs = [{"role": "user", "content": "Describe one thing you own as a JSON object."}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    schemas = [_schema(i) for i in range(num_prompts)]

    def params(structured: bool, lengths=None) -> list[SamplingParams]:
        return [
            SamplingParams(
                temperature=0.0,
                max_tokens=max_tokens if lengths is None else lengths[i],
                min_tokens=0 if lengths is None else lengths[i],
                structured_outputs=StructuredOutputsParams(json=s) if structured else None,
            )
            for i, s in enumerate(schemas)
        ]

    llm.generate([prompt], params(False)[:1], use_tqdm=False)  # compile the step shapes
    rows = []
    lengths = None
    for name in ("json cold", "json warm", "plain"):
        structured = name != "plain"
        t0 = time.perf_counter()
        outs = llm.generate([prompt] * num_prompts, params(structured, lengths), use_tqdm=False)
        wall = time.perf_counter() - t0
        if name == "json warm":  # the plain pass makes as many tokens per request
            lengths = [max(1, len(o.outputs[0].token_ids)) for o in outs]
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        ttft = np.array([o.metrics.first_token_time - o.metrics.arrival_time for o in outs])
        valid = 0
        if structured:
            for s, o in zip(schemas, outs):
                try:
                    jsonschema.validate(json.loads(o.outputs[0].text), s)
                    valid += 1
                except (ValueError, jsonschema.ValidationError):
                    pass
        rows.append(
            dict(
                name=name,
                wall_s=wall,
                tokens=tokens,
                tok_s=tokens / wall,
                ttft_p50_ms=float(np.percentile(ttft, 50)) * 1e3,
                ttft_p99_ms=float(np.percentile(ttft, 99)) * 1e3,
                valid=valid if structured else None,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m jaxllm.benchmarks.structured_outputs",
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    kw = dict(max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len)
    rows = run(args.model, args.num_prompts, args.max_tokens, kw)
    import jax

    print(
        f"{args.model}, {args.num_prompts} requests x {args.max_tokens} tokens, greedy, on "
        f"{jax.devices()[0].device_kind}"
    )
    print(
        "| pass | wall s | output tokens | tok/s | vs plain | TTFT p50 ms | TTFT p99 ms | valid |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    base = rows[-1]["tok_s"]
    for r in rows:
        valid = "" if r["valid"] is None else f"{r['valid']}/{args.num_prompts}"
        ttft = f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f}"
        print(
            f"| {r['name']} | {r['wall_s']:.1f} | {r['tokens']} | {r['tok_s']:.1f} | "
            f"{r['tok_s'] / base:.2f}x | {ttft} | {valid} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
