"""The CPU probe behind `LlamaForCausalLM.unroll_layers` (rolled on the CPU): one SmolLM2 (random
weights, f32) batch-16 decode step at context 192, rolled vs unrolled layers: compile time and
the step median.

    JAX_PLATFORMS=cpu python -m jaxllm.benchmarks.scan_unroll_cpu_probe
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.entrypoints.strict_parser import script_parser
from jaxllm.model_loader.dummy import load_dummy
from jaxllm.models.batch import KVCache, StepBatch
from jaxllm.models.registry import get_model_class


def main(argv: list[str] | None = None) -> None:
    script_parser(__doc__).parse_args(argv)  # no flags: --help only
    lm = load_dummy("smollm2-135m", "float32")
    c = lm.config
    S, ctx, bs = 16, 192, 16
    P = ctx // bs
    tables = np.arange(1, 1 + S * P, dtype=np.int32).reshape(S, P)
    batch = StepBatch(
        token_ids=jnp.ones((S,), jnp.int32),
        positions=jnp.full((S,), ctx - 1, jnp.int32),
        slot_mapping=jnp.asarray(tables[:, -1] * bs + bs - 1),
        block_tables=jnp.asarray(tables),
        kv_lens=jnp.full((S,), ctx, jnp.int32),
        query_start_loc=jnp.arange(S + 1, dtype=jnp.int32),
        logits_indices=jnp.arange(S, dtype=jnp.int32),
        decode_only=True,
    )
    shape = (c.num_hidden_layers, 1 + S * P, c.num_key_value_heads, bs, c.head_dim)
    for unroll in (False, True):
        m = get_model_class(c.architecture)(c, "reference", None, unroll)
        f = jax.jit(lambda p, kv, b, m=m: m.apply({"params": p}, kv, b))
        kv = KVCache(jnp.zeros(shape), jnp.zeros(shape))
        t = time.perf_counter()
        comp = f.lower(lm.params, kv, batch).compile()
        tc = time.perf_counter() - t
        comp(lm.params, kv, batch)[1].block_until_ready()
        ts = []
        for _ in range(15):
            t = time.perf_counter()
            comp(lm.params, kv, batch)[1].block_until_ready()
            ts.append(time.perf_counter() - t)
        print(
            f"decode S={S} ctx={ctx} unroll={unroll}: compile {tc:.1f} s, "
            f"step median {sorted(ts)[7] * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
