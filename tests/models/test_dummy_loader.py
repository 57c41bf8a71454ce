"""Dummy presets (shapes against HF models built from the same configs) and model-name resolution
errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxllm.model_loader import dummy, load_model
from jaxllm.models.layout import param_layout

# ----------------------------------------------------------------------------- dummy


def test_dummy_preset_shapes_match_hf_models():
    """Each preset's params have the shapes of the HF model built from the same config."""
    for name, hf_dict in dummy.PRESETS.items():
        hf_cfg = transformers.AutoConfig.for_model(
            hf_dict["model_type"], **{k: v for k, v in hf_dict.items() if k != "model_type"}
        )
        with torch.device("meta"):
            hf_model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
        sd = hf_model.state_dict()
        config = dummy.dummy_config(name, "bfloat16")
        got = dummy.dummy_param_shapes(config)  # abstract: allocates nothing
        for spec in param_layout(config):  # each leaf has its HF tensor's shape (or rows)
            leaf = got
            for key in spec.path:
                leaf = leaf[key]
            assert leaf.shape == spec.shape and leaf.dtype == jnp.bfloat16, (name, spec.path)
            hf_name = spec.hf_tensors()[0][1]
            if config.is_moe and hf_name not in sd:
                # transformers 5 fuses a MoE block's experts in memory (and renames Mixtral's
                # block) but saves them under these names: test_moe_vs_hf.py loads such
                # folders; the parameter count below still covers these leaves
                continue
            hf_shape = tuple(sd[hf_name].shape)
            if spec.hf_rows is not None:
                hf_shape = (spec.hf_rows[1] - spec.hf_rows[0],) + hf_shape[1:]
            assert hf_shape == spec.hf_shape, (name, spec.path)
        assert ("lm_head" in got) == (not hf_cfg.tie_word_embeddings), name
        n_ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(got))
        n_hf = sum(p.numel() for p in hf_model.parameters())  # tied weights counted once
        assert n_ours == n_hf, name


def test_dummy_tiny_values():
    m = load_model("dummy:tiny")
    assert m.format == "dummy" and m.tokenizer is None and m.config.dtype == "float32"
    k = np.asarray(m.params["layers"]["self_attn"]["q_proj"]["kernel"])
    assert k.shape == (2, 64, 64) and np.all(np.isfinite(k)) and 0.015 < k.std() < 0.025
    np.testing.assert_array_equal(np.asarray(m.params["norm"]["scale"]), np.ones(64))
    # per-leaf keys: distinct leaves of equal shape differ
    assert not np.array_equal(
        np.asarray(m.params["layers"]["mlp"]["gate_proj"]["kernel"]),
        np.asarray(m.params["layers"]["mlp"]["up_proj"]["kernel"]),
    )
    b = load_model("dummy:tiny", dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(b.params))
    again = dummy.init_dummy_params(m.config, seed=0)
    np.testing.assert_array_equal(
        np.asarray(again["lm_head"]["kernel"]), np.asarray(m.params["lm_head"]["kernel"])
    )


# ----------------------------------------------------------------------------- bad input


def test_missing_paths_and_names(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"nope: no such file or folder.*dummy:NAME"):
        load_model(missing)
    with pytest.raises(ValueError, match="nope"):  # the same error is also a ValueError
        load_model(missing)
    with pytest.raises(ValueError, match="missing config.json"):
        load_model(str(tmp_path))  # an empty folder
    with pytest.raises(ValueError, match=r"unknown dummy model 'nope'.*llama-3-8b.*tiny"):
        load_model("dummy:nope")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        load_model("dummy:tiny", dtype="int8")
    other = tmp_path / "notes.txt"
    other.write_text("hi")
    with pytest.raises(ValueError, match="notes.txt: not a model"):
        load_model(str(other))
