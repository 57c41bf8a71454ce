"""HF safetensors folders and converted (orbax) folders against the HF transformers state dicts of
random models saved with `save_pretrained`; their bad-input errors.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from loader_helpers import (
    SMALL,
    assert_tree_close,
    expected_params,
    save_hf_model,
)

from jaxllm.config import ModelConfig
from jaxllm.entrypoints.convert import convert_main
from jaxllm.model_loader import LoadedModel, dummy, load_model
from jaxllm.model_loader.hf import config_from_hf
from jaxllm.model_loader.orbax import config_to_hf_dict

# ----------------------------------------------------------------------------- HF folders


@pytest.mark.parametrize(
    "case", ["llama_untied", "llama_tied_sharded", "mistral", "qwen2_bias", "llama_bf16_head_dim"]
)
def test_hf_folder_params_equal_state_dict(tmp_path, case):
    kw = {}
    dtype = torch.float32
    if case == "llama_untied":
        cfg = transformers.LlamaConfig(**SMALL, tie_word_embeddings=False)
    elif case == "llama_tied_sharded":
        cfg = transformers.LlamaConfig(**SMALL, tie_word_embeddings=True)
        kw = {"max_shard_size": "40KB"}
    elif case == "mistral":
        cfg = transformers.MistralConfig(**SMALL, sliding_window=32, tie_word_embeddings=False)
    elif case == "qwen2_bias":
        cfg = transformers.Qwen2Config(**SMALL, tie_word_embeddings=True)
    else:
        cfg = transformers.LlamaConfig(**SMALL, head_dim=24, tie_word_embeddings=False)
        dtype = torch.bfloat16
    sd = save_hf_model(tmp_path, cfg, dtype, **kw)
    if case == "llama_tied_sharded":
        assert os.path.isfile(tmp_path / "model.safetensors.index.json")
        assert len(list(tmp_path.glob("model-*.safetensors"))) > 1

    m = load_model(str(tmp_path))
    assert isinstance(m, LoadedModel) and m.format == "hf" and m.tokenizer is None
    c = m.config
    assert c.dtype == ("bfloat16" if dtype == torch.bfloat16 else "float32")
    assert (c.num_hidden_layers, c.hidden_size, c.vocab_size) == (3, 64, 96)
    assert c.tie_word_embeddings == cfg.tie_word_embeddings
    assert c.head_dim == (24 if case == "llama_bf16_head_dim" else 16)
    assert c.attention_bias == (case == "qwen2_bias")
    assert c.sliding_window == (32 if case == "mistral" else None)
    with open(tmp_path / "generation_config.json") as f:
        assert m.generation_config == json.load(f)
    want = expected_params(sd, 3, cfg.tie_word_embeddings, c.attention_bias)
    for leaf in jax.tree.leaves(m.params):
        assert leaf.dtype == jnp.dtype(c.dtype)
    assert_tree_close(m.params, want, atol=0.0)  # bit-exact


def test_hf_tied_checkpoint_with_lm_head_is_accepted(tmp_path):
    from safetensors.numpy import load_file, save_file

    cfg = transformers.LlamaConfig(**SMALL, tie_word_embeddings=True)
    sd = save_hf_model(tmp_path, cfg)
    tensors = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    m = load_model(str(tmp_path))
    assert "lm_head" not in m.params
    assert_tree_close(m.params, expected_params(sd, 3, True, False))


def test_hf_dtype_override(tmp_path):
    sd = save_hf_model(tmp_path, transformers.LlamaConfig(**SMALL))
    m = load_model(str(tmp_path), dtype="bf16")
    assert m.config.dtype == "bfloat16"
    want = jax.tree.map(
        lambda x: np.asarray(x.astype(jnp.bfloat16), np.float32),
        expected_params(sd, 3, False, False),
    )
    assert_tree_close(m.params, want)


# ----------------------------------------------------------------------------- converted folders


def test_convert_main_hf_to_bf16(tmp_path, capsys):
    src = tmp_path / "hf"
    sd = save_hf_model(src, transformers.Qwen2Config(**SMALL, tie_word_embeddings=False))
    out = convert_main(str(src), str(tmp_path / "out"), "bfloat16")
    assert "converted" in capsys.readouterr().out
    m = load_model(out)
    assert m.format == "orbax" and m.config.dtype == "bfloat16" and m.tokenizer is None
    want = jax.tree.map(
        lambda x: np.asarray(x.astype(jnp.bfloat16), np.float32),
        expected_params(sd, 3, False, True),
    )
    assert_tree_close(m.params, want)
    m32 = load_model(out, dtype="float32")  # cast on load
    assert m32.config.dtype == "float32"
    assert_tree_close(m32.params, want)


def test_config_round_trips_through_hf_dict():
    configs = [dummy.dummy_config(n) for n in dummy.PRESETS]
    configs.append(  # no `architectures` in the dict: the loader names it from model_type
        config_from_hf(
            transformers.MistralConfig(**SMALL, sliding_window=32).to_dict(), "bfloat16", "test"
        )
    )
    for c in configs:
        assert ModelConfig.from_hf_dict(config_to_hf_dict(c), c.dtype) == c


def test_hf_folder_errors(tmp_path):
    cfg = transformers.LlamaConfig(**SMALL)
    save_hf_model(tmp_path, cfg)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(str(tmp_path))

    weights.unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_model(str(tmp_path))

    from safetensors.numpy import load_file, save_file

    weights.write_bytes(data)
    tensors = load_file(weights)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"missing tensors: \['model\.layers\.1\.mlp\.up_proj"):
        load_model(str(tmp_path))

    hf = json.loads((tmp_path / "config.json").read_text())
    hf["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*supported: Gemma3ForCausalLM, Llama"):
        load_model(str(tmp_path))


def test_hf_llama_attention_bias_is_refused(tmp_path):
    # HF Llama with attention_bias=True also biases o_proj, which jaxllm's layout has no slot for.
    save_hf_model(tmp_path, transformers.LlamaConfig(**SMALL, attention_bias=True))
    with pytest.raises(ValueError, match=r"no place for.*o_proj\.bias"):
        load_model(str(tmp_path))
