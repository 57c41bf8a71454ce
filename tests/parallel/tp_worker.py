"""Runs in a subprocess with 8 virtual CPU devices (XLA_FLAGS set before jax is imported) for
tests/parallel/test_tensor_parallel.py; writes what it observed as JSON (the test asserts).

    python tests/parallel/tp_worker.py OUT.json SECTION [SECTION ...]

Sections: llama (random HF Llama, 8 query / 2 KV heads: greedy tokens for tp 1, 2, 4 and
dp 2 x tp 2, parameter and KV-cache shardings, shard contents, step collectives), formats
(orbax and dummy loads into shards), smollm2 (greedy tokens for tp 1 and 3; tp 2 rejected),
embedding (the vocabulary-parallel lookup against a plain one).
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

ENGINE = dict(
    num_gpu_blocks_override=64, max_model_len=128, max_num_seqs=8, compilation_cache_dir="off"
)
PROMPTS = [[5, 17, 99, 3, 250], list(range(40, 61)), [7] * 3 + list(range(100, 130))]
NEW_TOKENS = 8


def make_llama(folder: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)


def llama_folder(tmp: str) -> str:
    """The random Llama's folder: $TP_WORKER_LLAMA_DIR if set (kept for the multi-host test),
    else one under `tmp`; written on first use."""
    folder = os.environ.get("TP_WORKER_LLAMA_DIR") or os.path.join(tmp, "llama")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        make_llama(folder)
    return folder


def greedy(llm, prompts, n=NEW_TOKENS) -> list[list[int]]:
    from jaxllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def shard_report(params, reference) -> dict:
    """path -> (spec string, every addressable shard equals the reference's slice)."""
    out = {}
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, leaf), ref in zip(flat, jax.tree.leaves(reference)):
        ok = leaf.shape == ref.shape and all(
            np.array_equal(np.asarray(s.data), ref[s.index]) for s in leaf.addressable_shards
        )
        out[path_str(path)] = [
            str(leaf.sharding.spec),
            bool(ok),
            sorted({d.id for d in leaf.sharding.device_set}),
        ]
    return out


def collectives(text: str) -> dict:
    """op -> list of result shapes of the collectives in compiled HLO text."""
    found: dict[str, list[str]] = {}
    for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter"):
        pat = re.compile(r"= ([a-z0-9]+\[[0-9,]*\])[^ ]* " + op + r"(?:-start)?\(")
        found[op] = pat.findall(text)
    return found


def section_llama(res: dict, tmp: str) -> None:
    from jaxllm import LLM
    from jaxllm.model_loader import load_model
    from jaxllm.models.batch import make_kv_cache
    from jaxllm.models.step import make_step, prefill_batch
    from jaxllm.parallel import expand_kv_heads, kv_cache_sharding, kv_head_replicas, make_mesh

    folder = llama_folder(tmp)
    res["tokens"] = {}
    for tp in (1, 2, 4):
        llm = LLM(folder, tensor_parallel_size=tp, **ENGINE)
        res["tokens"][f"tp{tp}"] = greedy(llm, PROMPTS)
        if tp == 4:
            runner = llm.llm_engine.runner
            k = runner.kv_cache.k
            res["kv_cache"] = {
                "spec": str(k.sharding.spec),
                "shape": list(k.shape),
                "shard_shape": list(k.addressable_shards[0].data.shape),
            }
            res["runner_num_kv_heads"] = runner.model_config.num_key_value_heads
        del llm
    llm = LLM(folder, tensor_parallel_size=2, data_parallel_size=2, **ENGINE)
    engine = llm.llm_engine
    res["tokens"]["dp2_tp2"] = greedy(llm, PROMPTS)
    res["dp_devices"] = [sorted(d.id for d in r.runner.mesh.devices.flat) for r in engine.replicas]
    # load spreading: each new request goes to the replica with the fewest unfinished ones
    from jaxllm import SamplingParams

    sp = SamplingParams(max_tokens=2)
    picks = [engine.replicas[engine.pick_replica()] is r for r in engine.replicas]
    engine.add_request("a", PROMPTS[0], sp)
    engine.add_request("b", PROMPTS[1], sp)
    engine.add_request("c", PROMPTS[2], sp)
    res["dp_owner"] = {rid: engine._owner[rid] for rid in ("a", "b", "c")}
    res["dp_first_pick"] = picks
    engine.abort_request(["a", "b", "c"])
    del llm, engine

    # shardings and shard contents, loaded straight into shards (safetensors)
    full = jax.device_get(load_model(folder, tokenizer=False).params)
    config = load_model(folder, tokenizer=False).config
    res["shards"] = {}
    for tp in (2, 4):
        mesh = make_mesh(tp)
        loaded = load_model(folder, tokenizer=False, mesh=mesh)
        ref = expand_kv_heads(full, config, kv_head_replicas(config, tp))
        res["shards"][f"tp{tp}"] = shard_report(loaded.params, ref)
        if tp == 4:
            batch, nb = prefill_batch([PROMPTS[1]], 16)
            cache = make_kv_cache(loaded.config, nb, 16, sharding=kv_cache_sharding(mesh))
            step = make_step(config, "reference", mesh)
            hlo = step.lower(loaded.params, cache, batch).compile().as_text()
            res["collectives"] = collectives(hlo)
            res["collectives_T"] = len(PROMPTS[1])


def section_formats(res: dict, tmp: str) -> None:
    from jaxllm.model_loader import load_model
    from jaxllm.model_loader.orbax import save_converted
    from jaxllm.parallel import expand_kv_heads, kv_head_replicas, make_mesh

    folder = llama_folder(tmp)
    base = load_model(folder, tokenizer=False)
    conv = save_converted(base, os.path.join(tmp, "converted"))
    full = jax.device_get(base.params)
    loaded = load_model(conv, tokenizer=False, mesh=make_mesh(4))
    res["orbax_tp4"] = shard_report(loaded.params, expand_kv_heads(full, base.config, 2))
    dummy = jax.device_get(load_model("dummy:tiny").params)
    dcfg = load_model("dummy:tiny").config
    for tp in (2, 4):
        loaded = load_model("dummy:tiny", mesh=make_mesh(tp))
        res[f"dummy_tp{tp}"] = shard_report(
            loaded.params, expand_kv_heads(dummy, dcfg, kv_head_replicas(dcfg, tp))
        )


def section_smollm2(res: dict, tmp: str) -> None:
    from jaxllm import LLM
    from jaxllm.model_loader import load_model
    from jaxllm.parallel import make_mesh

    prompts = [[1, 504, 3458, 314, 4649, 30], [1, 23, 1024, 77, 9, 5000, 12, 300]]
    # the GGUF is read once, straight into the shards of a tp=3 mesh; tp=1 reuses those weights
    loaded = load_model("smollm2-135m", dtype="float32", mesh=make_mesh(3))
    res["smollm2_tokens"] = {}
    for tp in (3, 1):
        llm = LLM(loaded, tensor_parallel_size=tp, **ENGINE)
        res["smollm2_tokens"][f"tp{tp}"] = greedy(llm, prompts, 5)
        params = llm.llm_engine.runner.params  # tp=1 on the CPU: cpu_ext's packed layout
        # the GGUF's Q4_1 blocks are kept: q_proj is {"kernel_q4_1": [L, Hq*Dh, row_bytes]}, joined
        # with k/v into qkv_proj on the CPU's packed layout
        if "packed_layers" in params:
            p = params["packed_layers"]["self_attn"]["qkv_proj"]["kernel_q4_1"]
        else:
            p = params["layers"]["self_attn"]["q_proj"]["kernel_q4_1"]
        res[f"smollm2_q_spec_tp{tp}"] = [str(p.sharding.spec), len(p.sharding.device_set)]
        del llm
    try:
        LLM("smollm2-135m", tensor_parallel_size=2, **ENGINE)
        res["smollm2_tp2_error"] = None
    except ValueError as e:
        res["smollm2_tp2_error"] = str(e)


def section_embedding(res: dict, tmp: str) -> None:
    """vocab_parallel_embed against a plain lookup (tp 2 and 4; V = 62 splits over 2 but not 4:
    the plain-lookup fallback), and the collectives of a one-token lookup at tp 2."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxllm.layers.embedding import vocab_parallel_embed
    from jaxllm.parallel import resolve_mesh

    rng = np.random.default_rng(0)
    diffs = {}
    for tp in (2, 4):
        mesh = resolve_mesh(None, tp)
        for V in (64, 62):
            table = jnp.asarray(rng.standard_normal((V, 8)), jnp.float32)
            if V % tp == 0:
                table = jax.device_put(table, NamedSharding(mesh, P("model", None)))
            for T in (1, 5):
                ids = jnp.asarray(rng.integers(0, V, T), jnp.int32)
                got = jax.jit(lambda t, i, m=mesh: vocab_parallel_embed(t, i, m))(table, ids)
                diffs[f"tp{tp}_V{V}_T{T}"] = float(
                    jnp.abs(got - jnp.take(table, ids, axis=0)).max()
                )
    res["embedding_max_abs_diff"] = diffs
    mesh = resolve_mesh(None, 2)
    table = jax.device_put(jnp.zeros((64, 8), jnp.float32), NamedSharding(mesh, P("model", None)))
    text = (
        jax.jit(lambda t, i: vocab_parallel_embed(t, i, mesh))
        .lower(table, jnp.zeros(1, jnp.int32))
        .compile()
        .as_text()
    )
    res["embedding_collectives"] = collectives(text)


SECTIONS = {
    "llama": section_llama,
    "formats": section_formats,
    "smollm2": section_smollm2,
    "embedding": section_embedding,
}


def main() -> None:
    out, names = sys.argv[1], sys.argv[2:]
    res: dict = {"num_devices": len(jax.devices())}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            SECTIONS[name](res, tmp)
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
