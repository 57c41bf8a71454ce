"""Rope scalings (linear, llama3, dynamic NTK, yarn, longrope) and partial rotary vs transformers'
own rotary embedding modules and Phi-3's apply_rotary_pos_emb (torch, float32)."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as phi3_apply_rotary
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from jaxllm.config import ModelConfig, RopeScaling
from jaxllm.layers.rotary import apply_rotary, rotary_cos_sin
from jaxllm.model_loader.orbax import config_to_hf_dict
from jaxllm.rope_config import rope_scaling_from_hf, rope_scaling_to_hf

SMALL = dict(
    vocab_size=64,
    hidden_size=128,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
)  # head_dim 64


def _factors(n, lo, hi):  # distinct per-frequency LongRoPE divisors
    return np.linspace(lo, hi, n).round(4).tolist()


# name: (config class, rotary module, config arguments, the length where the frequencies switch)
CASES = {
    "linear": (
        transformers.LlamaConfig,
        LlamaRotaryEmbedding,
        dict(max_position_embeddings=128, rope_scaling={"rope_type": "linear", "factor": 4.0}),
        64,
    ),
    "llama3": (
        transformers.LlamaConfig,
        LlamaRotaryEmbedding,
        dict(
            max_position_embeddings=256,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
        32,
    ),
    "dynamic": (
        transformers.LlamaConfig,
        LlamaRotaryEmbedding,
        dict(max_position_embeddings=64, rope_scaling={"rope_type": "dynamic", "factor": 3.0}),
        64,
    ),
    "dynamic-partial": (
        transformers.LlamaConfig,
        LlamaRotaryEmbedding,
        dict(
            max_position_embeddings=48,
            rope_theta=500000.0,
            partial_rotary_factor=0.5,
            rope_scaling={"rope_type": "dynamic", "factor": 2.5},
        ),
        48,
    ),
    "yarn": (  # no original_max_position_embeddings: the model's max (transformers' default)
        transformers.LlamaConfig,
        LlamaRotaryEmbedding,
        dict(max_position_embeddings=64, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
        64,
    ),
    "yarn-mscale": (
        transformers.LlamaConfig,
        LlamaRotaryEmbedding,
        dict(
            max_position_embeddings=256,
            rope_scaling={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
                "mscale": 1.0,
                "mscale_all_dim": 0.707,
                "beta_fast": 16,
                "beta_slow": 2,
                "truncate": False,
            },
        ),
        64,
    ),
    "qwen3-yarn": (
        transformers.Qwen3Config,
        Qwen3RotaryEmbedding,
        dict(
            head_dim=32,
            max_position_embeddings=256,
            rope_theta=1000000.0,
            rope_scaling={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        64,
    ),
    "phi3-longrope": (  # no factor: max_position_embeddings / original_max_position_embeddings
        transformers.Phi3Config,
        Phi3RotaryEmbedding,
        dict(
            max_position_embeddings=256,
            original_max_position_embeddings=64,
            rope_scaling={
                "type": "longrope",
                "short_factor": _factors(32, 1.0, 1.5),
                "long_factor": _factors(32, 1.0, 12.0),
            },
        ),
        64,
    ),
    "phi3-su-partial": (
        transformers.Phi3Config,
        Phi3RotaryEmbedding,
        dict(
            max_position_embeddings=512,
            original_max_position_embeddings=64,
            partial_rotary_factor=0.5,
            rope_scaling={
                "type": "su",
                "short_factor": _factors(16, 1.0, 1.2),
                "long_factor": _factors(16, 1.5, 20.0),
            },
        ),
        64,
    ),
}


def hf_config(name):
    cls, _, extra, _ = CASES[name]
    return cls(**SMALL, **extra)


def parse(cfg):
    """ModelConfig of an HF config, its scaling resolved with the model's lengths."""
    d = cfg.to_dict()
    rope = d["rope_parameters"]
    scaling = rope_scaling_from_hf(
        rope,
        max_position_embeddings=d["max_position_embeddings"],
        original_max_position_embeddings=d.get("original_max_position_embeddings"),
    )
    mc = ModelConfig.from_hf_dict(d)  # resolves the lengths from the config itself
    assert mc.rope_scaling == scaling
    return mc


_apply_rotary = jax.jit(apply_rotary)
_rotary_cos_sin = jax.jit(  # as the models call it: the rope settings are static
    rotary_cos_sin, static_argnames=("rotary_dim", "theta", "scaling", "max_position_embeddings")
)


def ours(mc, lens):
    """cos, sin [sum(lens), rotary_dim // 2] of sequences of `lens`, packed into one step."""
    positions = np.concatenate([np.arange(n) for n in lens]).astype(np.int32)
    seq_lens = np.concatenate([np.full(n, n) for n in lens]).astype(np.int32)
    cos, sin = _rotary_cos_sin(
        positions,
        seq_lens,
        rotary_dim=mc.rotary_dim,
        theta=mc.rope_theta,
        scaling=mc.rope_scaling,
        max_position_embeddings=mc.max_position_embeddings,
    )
    return np.asarray(cos), np.asarray(sin)


def hf(name, cfg, n, rotary_dim):
    """HF's cos, sin [n, rotary_dim // 2] for one sequence 0..n-1 (a fresh module: dynamic and
    longrope keep state across calls)."""
    module = CASES[name][1](cfg)
    x = torch.zeros(1, n, rotary_dim, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = module(x, torch.arange(n)[None])
    half = rotary_dim // 2
    cos, sin = cos[0].numpy(), sin[0].numpy()
    np.testing.assert_array_equal(cos[:, :half], cos[:, half:])  # rotate-half layout
    return cos[:, :half], sin[:, :half]


@pytest.mark.parametrize("name", sorted(CASES))
def test_cos_sin_match_hf_below_and_above_original_length(name):
    cfg = hf_config(name)
    mc = parse(cfg)
    switch = CASES[name][3]
    lens = [switch // 2, switch, switch + 1, 3 * switch]
    if mc.rope_scaling.rope_type == "longrope":
        # one factor list for the engine, picked by its max_model_len: transformers' pick for a
        # sequence of length n is the engine's with max_model_len n
        parts = [ours(mc.for_max_model_len(n), [n]) for n in lens]
        cos, sin = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
    else:
        cos, sin = ours(mc, lens)  # all four sequences in one step: picked per token
    start = 0
    for n in lens:
        want_cos, want_sin = hf(name, cfg, n, mc.rotary_dim)
        atol = 1e-6
        if name.startswith("dynamic") and n > switch:
            # the grown base and its powers are float32 ops on the device, where XLA folds
            # constants and rounds pow otherwise than torch (an ulp or two of a frequency): the
            # angle at position p is then off by about p * 2 ulp
            atol = 2.4e-7 * n
        np.testing.assert_allclose(cos[start : start + n], want_cos, rtol=1e-6, atol=atol)
        np.testing.assert_allclose(sin[start : start + n], want_sin, rtol=1e-6, atol=atol)
        start += n


def test_parsed_fields_follow_transformers_defaults():
    yarn = parse(hf_config("yarn")).rope_scaling
    assert yarn == RopeScaling(
        rope_type="yarn",
        factor=4.0,
        original_max_position_embeddings=64,  # the model's max
        attention_factor=0.1 * np.log(4.0) + 1,
    )
    mscale = parse(hf_config("yarn-mscale")).rope_scaling
    assert mscale is not None
    assert mscale.attention_factor == pytest.approx(
        (0.1 * np.log(4) + 1) / (0.0707 * np.log(4) + 1)
    )
    phi = parse(hf_config("phi3-su-partial"))
    assert phi.rotary_dim == 32 and phi.rope_scaling is not None
    assert phi.rope_scaling.rope_type == "longrope" and phi.rope_scaling.factor == 8.0
    assert phi.rope_scaling.attention_factor == pytest.approx(np.sqrt(1 + np.log(8) / np.log(64)))
    assert isinstance(phi.rope_scaling.long_factor, tuple)
    # vLLM's pick: the long factors where the engine's max_model_len passes the original 64
    assert phi.rope_scaling.use_long_factor  # 512 positions by default
    assert not phi.for_max_model_len(64).rope_scaling.use_long_factor
    assert phi.for_max_model_len(65).rope_scaling.use_long_factor
    yarn_model = parse(hf_config("yarn"))
    assert yarn_model.for_max_model_len(8) == yarn_model
    hash(phi.rope_scaling)  # a static jit argument

    # Phi-3's older "yarn" name with LongRoPE's factor lists is longrope; a plain yarn stays yarn
    lists = {"short_factor": [1.0, 2.0], "long_factor": [3.0, 4.0], "factor": 2.0}
    assert rope_scaling_from_hf({"type": "yarn", **lists}, max_position_embeddings=8) == (
        rope_scaling_from_hf({"rope_type": "longrope", **lists}, max_position_embeddings=8)
    )
    qwen = parse(hf_config("qwen3-yarn")).rope_scaling
    assert qwen is not None and qwen.rope_type == "yarn"
    # transformers prefers the config's top-level original_max_position_embeddings (Phi-3)
    over = rope_scaling_from_hf(
        {"rope_type": "longrope", "original_max_position_embeddings": 99, **lists},
        original_max_position_embeddings=32,
    )
    assert over is not None and over.original_max_position_embeddings == 32


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if not n.startswith("phi3")])
def test_from_hf_dict_reads_dicts_that_name_their_lengths(name):
    # transformers writes original_max_position_embeddings into these dicts; Phi-3's lack a factor
    cfg = hf_config(name)
    assert ModelConfig.from_hf_dict(cfg.to_dict()) == parse(cfg)


def test_missing_lengths_are_refused():
    with pytest.raises(ValueError, match="needs original_max_position_embeddings"):
        rope_scaling_from_hf({"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="without a factor needs max_position_embeddings"):
        rope_scaling_from_hf(
            {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]},
            original_max_position_embeddings=64,
        )
    with pytest.raises(ValueError, match="needs 'long_factor'"):
        rope_scaling_from_hf(
            {"rope_type": "longrope", "short_factor": [1.0], "factor": 2.0},
            max_position_embeddings=8,
        )


def test_unknown_type_names_the_supported_ones():
    with pytest.raises(
        ValueError, match=r"'ntk-by-parts'.*\(linear, llama3, dynamic, yarn, longrope\)"
    ):
        rope_scaling_from_hf({"rope_type": "ntk-by-parts", "factor": 2.0})


@pytest.mark.parametrize("name", sorted(CASES))
def test_scaling_round_trips_through_hf_dict(name):
    mc = parse(hf_config(name))
    rs = mc.rope_scaling
    assert rs is not None
    assert rope_scaling_from_hf(rope_scaling_to_hf(rs)) == rs
    assert rope_scaling_from_hf(json.loads(json.dumps(rope_scaling_to_hf(rs)))) == rs
    llama = mc.replace(architecture="LlamaForCausalLM", qk_norm=False)  # a registered one
    assert ModelConfig.from_hf_dict(config_to_hf_dict(llama)) == llama


@pytest.mark.parametrize("rotary_dim", [64, 32, 16])
def test_apply_rotary_matches_hf_phi3(rotary_dim):
    rng = np.random.default_rng(rotary_dim)
    T, H, D = 9, 3, 64
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k = rng.standard_normal((T, H, D)).astype(np.float32)
    angles = rng.uniform(-4, 4, (T, rotary_dim // 2)).astype(np.float32)
    cos, sin = np.cos(angles), np.sin(angles)

    def full(a):  # [1, T, R]: HF's cos/sin repeat the half
        return torch.from_numpy(np.concatenate([a, a], -1))[None]

    def heads_first(a):  # [1, H, T, D]
        return torch.from_numpy(a).permute(1, 0, 2)[None]

    want_q, want_k = phi3_apply_rotary(heads_first(q), heads_first(k), full(cos), full(sin))
    for x, want in ((q, want_q), (k, want_k)):
        got = np.asarray(_apply_rotary(x, cos, sin))
        np.testing.assert_allclose(got, want[0].permute(1, 0, 2).numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got[..., rotary_dim:], x[..., rotary_dim:])
