"""Helpers shared by the loader tests (test_hf_loader, test_gguf_loader, test_dummy_loader):
HF reference models saved to folders, small GGUF files written with `gguf`, expected param trees.
"""

from __future__ import annotations

import os

import gguf
import jax
import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType as QT

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


def build_tiny_llama_gguf(path, *, unsupported: bool = False, types=None) -> dict:
    """A llama GGUF covering every supported type (or `types`: per layer, the GGML types of q, k,
    v, o, gate, up, down); returns the expected HF-layout state dict."""
    c = TINY_GGUF
    rng = np.random.default_rng(0)
    Dh = c["D"] // c["H"]
    types = types or [  # per layer: q, k, v, o, gate, up, down
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
