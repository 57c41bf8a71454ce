"""GPU end-to-end check: greedy SmolLM2 (float32) with backend `pallas` and/or `cuda` equals
backend `reference`, token for token.

    python scripts/gpu_e2e_check.py [MODEL] [--backend pallas] [--backend cuda]
    # MODEL: smollm2-135m (default) or a path to the GGUF file; --backend may repeat
    # (default pallas)

Prints a line per backend and exits non-zero on any mismatch; also times every backend.
"""

from __future__ import annotations

import sys
import time

from jaxllm.entrypoints.strict_parser import script_parser


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument(
        "--backend", action="append", choices=("pallas", "cuda"), help="backend(s) to check"
    )
    args = ap.parse_args(argv)
    checked = args.backend or ["pallas"]

    from jaxllm import LLM, SamplingParams

    model = args.model
    results = {}
    for backend in ("reference", *checked):
        llm = LLM(
            model,
            dtype="float32",
            max_model_len=1024,
            max_num_seqs=32,
            max_num_batched_tokens=512,
            attention_backend=backend,
        )
        tok = llm.get_tokenizer()
        text = (
            "The history of the city begins with a small settlement by the river, where "
            "farmers and traders met every season to exchange grain, tools and news. "
        ) * 30
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
        print(
            f"{backend}: {len(outs)} prompts, {n_out} tokens in {dt:.2f}s "
            f"({n_out / dt:.1f} tok/s), compilations {llm.llm_engine.runner.num_compilations}",
            flush=True,
        )
        del llm
    failed = 0
    for backend in checked:
        bad = [i for i, (a, b) in enumerate(zip(results["reference"], results[backend])) if a != b]
        for i in bad:
            a, b = results["reference"][i], results[backend][i]
            j = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"MISMATCH {backend} prompt {i}: first difference at token {j}", flush=True)
        print(
            f"{backend} == reference on all prompts"
            if not bad
            else f"{backend}: {len(bad)} prompts differ"
        )
        failed += bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
