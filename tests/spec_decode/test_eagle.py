"""EAGLE speculation on a tiny random HF Llama target with a randomly initialised EAGLE-1 head
saved in the checkpoint format (no real EAGLE checkpoint is available offline: these tests prove
the mechanics, not a real head's acceptance rate).

- the head's step equals the EAGLE-1 formula computed by torch (HF's Llama decoder layer without
  its input norm, over fc([embed(t_{i+1}); f_i]), no final norm before the LM head);
- the checkpoint loads into the expected shapes; a wrong-shaped head is a clear error;
- greedy outputs equal the target's own without speculation through chunked prefill, preemption
  and prefix-cache hits, with drafts proposed;
- an "identity" head (fc passes the feature through, the layer adds nothing) drafts the target's
  own greedy choice at the feature's position, i.e. the newest token: the features are paired
  with the right positions.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

import hf_reference  # noqa: E402

from jaxllm import LLM, SamplingParams  # noqa: E402
from jaxllm.config import ModelConfig  # noqa: E402
from jaxllm.models.batch import make_kv_cache  # noqa: E402
from jaxllm.models.step import prefill_batch  # noqa: E402
from jaxllm.spec_decode.eagle_checkpoint import load_eagle_head  # noqa: E402
from jaxllm.spec_decode.eagle_head import EagleHead, eagle_step  # noqa: E402

K = 3
TARGET = dict(**hf_reference.TINY_CONFIG, intermediate_size=128, num_hidden_layers=2)
HEAD = dict(**hf_reference.TINY_CONFIG, intermediate_size=96, num_hidden_layers=1)
# chunked prefill (16 tokens a step) and preemption: 8 usable blocks of 16 tokens for four
# sequences of up to 62 tokens plus lookahead slots
ENGINE = dict(
    dtype="float32",
    max_model_len=96,
    max_num_seqs=4,
    max_num_batched_tokens=16,
    num_gpu_blocks_override=9,
    block_size=16,
    enable_prefix_caching=True,
)
GREEDY = SamplingParams(temperature=0.0, max_tokens=20, min_tokens=20)


def _head_tensors(cfg: dict, seed: int, *, identity: bool = False) -> dict:
    """An EAGLE-1 head's tensors by checkpoint name (torch [out, in] weights), random; with
    `identity`, fc = [0 | I] and zero o_proj and down_proj, so f' = f."""
    g = torch.Generator().manual_seed(seed)
    D, F = cfg["hidden_size"], cfg["intermediate_size"]
    Dh = D // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * Dh, cfg["num_key_value_heads"] * Dh

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    t = {
        "fc.weight": rnd(D, 2 * D, scale=0.1),
        "fc.bias": rnd(D, scale=0.1),
        "layers.0.self_attn.q_proj.weight": rnd(q, D),
        "layers.0.self_attn.k_proj.weight": rnd(kv, D),
        "layers.0.self_attn.v_proj.weight": rnd(kv, D),
        "layers.0.self_attn.o_proj.weight": rnd(D, q),
        "layers.0.mlp.gate_proj.weight": rnd(F, D),
        "layers.0.mlp.up_proj.weight": rnd(F, D),
        "layers.0.mlp.down_proj.weight": rnd(D, F),
        "layers.0.post_attention_layernorm.weight": 1 + rnd(D, scale=0.1),
        "embed_tokens.weight": rnd(cfg["vocab_size"], D),  # EAGLE-1 ships one: ignored
    }
    if identity:
        t["fc.weight"] = torch.cat([torch.zeros(D, D), torch.eye(D)], dim=1)
        t["fc.bias"] = torch.zeros(D)
        t["layers.0.self_attn.o_proj.weight"] = torch.zeros(D, q)
        t["layers.0.mlp.down_proj.weight"] = torch.zeros(D, F)
    return t


def _save_head(folder, cfg: dict, tensors: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    hf = transformers.LlamaConfig(**cfg).to_dict()
    hf["architectures"] = ["LlamaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(hf))
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors")
    )
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("eagle")
    target = base / "target"
    hf_reference.random_hf_model(transformers.LlamaConfig(**TARGET), target, norm_noise=0.1)
    return {
        "target": str(target),
        "head": _save_head(base / "head", HEAD, _head_tensors(HEAD, 1)),
        "identity": _save_head(base / "identity", HEAD, _head_tensors(HEAD, 2, identity=True)),
    }


def _prompts() -> list[dict]:
    rng = np.random.default_rng(5)
    shared = rng.integers(3, 300, 20).tolist()
    prompts = [rng.integers(3, 300, n).tolist() for n in (42, 7, 30)]
    prompts.append(shared + [11, 12])
    prompts.append(shared + [13])  # a prefix-cache hit on the first's full block
    return [{"prompt_token_ids": p} for p in prompts]


def _ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_checkpoint_shapes_and_wrong_shaped_head(models, tmp_path):
    target = ModelConfig.from_hf_dict(transformers.LlamaConfig(**TARGET).to_dict())
    head, params = load_eagle_head(models["head"], target, "float32")
    assert head.num_hidden_layers == 1
    D, F = 64, 96
    assert params["fc"]["kernel"].shape == (2 * D, D) and params["fc"]["bias"].shape == (D,)
    attn = params["layer"]["self_attn"]
    assert attn["q_proj"]["kernel"].shape == (D, 64) and attn["k_proj"]["kernel"].shape == (D, 32)
    assert attn["o_proj"]["kernel"].shape == (64, D)
    assert params["layer"]["mlp"]["down_proj"]["kernel"].shape == (F, D)
    assert "input_layernorm" not in params["layer"]  # EAGLE-1's layer 0 has none
    bad = _head_tensors(HEAD, 1)
    bad["fc.weight"] = bad["fc.weight"][:, :D]  # [D, D]: no feature half
    folder = _save_head(tmp_path / "bad", HEAD, bad)
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(64, 64\), expected \(64, 128\)"):
        load_eagle_head(folder, target, "float32")
    wide = _save_head(tmp_path / "wide", {**HEAD, "hidden_size": 128}, _head_tensors(HEAD, 1))
    with pytest.raises(ValueError, match="must match its target"):
        load_eagle_head(wide, target, "float32")


def test_head_step_is_the_eagle_formula(models):
    """f' = Llama layer without input norm (fc([embed(t_{i+1}); f_i])), logits = lm_head(f'):
    the head's step against torch on the same weights."""
    target = ModelConfig.from_hf_dict(transformers.LlamaConfig(**TARGET).to_dict())
    head_cfg, params = load_eagle_head(models["head"], target, "float32")
    rng = np.random.default_rng(0)
    T, D, V = 11, 64, 300
    next_tokens = rng.integers(0, V, T).tolist()  # t_{i+1} at positions 0..T-1
    feats = rng.standard_normal((T, D)).astype(np.float32)  # f_i
    embed = rng.standard_normal((V, D)).astype(np.float32) * 0.2
    lm_head = rng.standard_normal((D, V)).astype(np.float32) * 0.2
    batch, num_blocks = prefill_batch([next_tokens], 16)
    cache = make_kv_cache(head_cfg, num_blocks, 16)
    head = EagleHead(head_cfg, "reference", fc_bias=True)
    step_params = {"head": params, "embed": embed, "lm_head": {"kernel": lm_head}}
    last = dataclasses.replace(batch, logits_indices=np.array([T - 1], np.int32))
    step = jax.jit(functools.partial(eagle_step, head))  # one compile, not one per op
    _, tokens, f = step(step_params, cache, feats, np.arange(T, dtype=np.int32), last)

    w = _head_tensors(HEAD, 1)
    layer_cfg = transformers.LlamaConfig(**HEAD)
    ref = transformers.LlamaModel(layer_cfg).eval()
    ref.layers[0].load_state_dict(
        {k.removeprefix("layers.0."): v for k, v in w.items() if k.startswith("layers.0.")},
        strict=False,
    )
    ref.layers[0].input_layernorm = torch.nn.Identity()
    ref.norm = torch.nn.Identity()
    with torch.no_grad():
        e = torch.from_numpy(embed)[torch.tensor(next_tokens)]
        x = torch.cat([e, torch.from_numpy(feats)], -1) @ w["fc.weight"].T + w["fc.bias"]
        want = ref(inputs_embeds=x[None]).last_hidden_state[0].numpy()  # [T, D]
    # every position: the head module's output rows
    apply = jax.jit(head.apply)
    _, f_all = apply(
        {"params": params}, make_kv_cache(head_cfg, num_blocks, 16), batch, embed, feats
    )
    np.testing.assert_allclose(np.asarray(f_all), want, rtol=1e-4, atol=1e-4)
    # the step: f' and the greedy draft at the sequence's last position
    np.testing.assert_allclose(np.asarray(f)[0], want[-1], rtol=1e-4, atol=1e-4)
    assert int(np.asarray(tokens)[0]) == int(np.argmax(want[-1] @ lm_head))


def test_greedy_equals_target_with_chunking_and_preemption(models):
    prompts = _prompts()
    reference = _ids(LLM(models["target"], **ENGINE).generate(prompts, GREEDY, use_tqdm=False))
    spec = {"method": "eagle", "model": models["head"], "num_speculative_tokens": K}
    llm = LLM(models["target"], speculative_config=spec, **ENGINE)
    assert _ids(llm.generate(prompts, GREEDY, use_tqdm=False)) == reference
    engine = llm.llm_engine
    assert max(len(p["prompt_token_ids"]) for p in prompts) > ENGINE["max_num_batched_tokens"]
    assert engine.scheduler.num_preemptions_total > 0
    assert engine.scheduler.prefix_cache_stats.hits > 0
    assert engine.spec_stats.num_draft_tokens > 0
    assert engine.runner.last_hidden_states is not None


def test_identity_head_drafts_the_newest_token(models):
    """With f' = f_i, the draft is argmax lm_head(f_i): the target's greedy token after position
    i. The catch-up's last position is the one before the newest token, so once the newest token
    is the target's own greedy output, every draft must be it; a feature taken from a wrong row
    would draft something else. (No min_tokens: its EOS ban would make the output differ from
    the argmax.)"""
    spec = {"method": "eagle", "model": models["identity"], "num_speculative_tokens": K}
    llm = LLM(models["target"], speculative_config=spec, **ENGINE)
    engine = llm.llm_engine
    for i, p in enumerate(_prompts()[:2]):
        engine.add_request(str(i), p, SamplingParams(temperature=0.0, max_tokens=12))
    checked = 0
    while engine.has_unfinished_requests():
        engine.step()
        for request in engine.scheduler.running:
            if request.spec_token_ids and request.num_output_tokens:
                newest = request.all_token_ids[-1]
                assert request.spec_token_ids == [newest] * len(request.spec_token_ids)
                checked += 1
    assert checked > 5
