"""Mixtral, Qwen3-MoE and Qwen2-MoE from GGUF files laid out as llama.cpp's converter writes them:
the router `ffn_gate_inp`, each projection's experts stacked in one tensor per layer
(`ffn_{gate,up,down}_exps`, numpy order [E, out, in]), Qwen2-MoE's shared expert (`*_shexp`, its
gate a vector [D] or [1, D]); Mixtral as a `llama` file with experts (q/k rows permuted).

Tiny random HF models (2 layers, 4 experts, top-2) are saved as folders and written here as GGUF
files from the saved tensors: F32 files load to exactly the HF folder's params, config included,
and give HF's logits; a Q8_0 file keeps its attention and shared-expert kernels in their blocks
and dequantizes the experts, the router and the shared expert's gate.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import gguf  # noqa: E402
import hf_reference  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402
from loader_helpers import (  # noqa: E402
    assert_tree_close,
    llama_meta,
    llamacpp_permute,
    roundtrip,
    write_gguf,
)
from safetensors.numpy import load_file  # noqa: E402

from jaxllm.model_loader import load_model  # noqa: E402
from jaxllm.model_loader.gguf import gguf_to_hf_config  # noqa: E402
from jaxllm.model_loader.gguf_reader import open_gguf  # noqa: E402
from jaxllm.models.layout import layout_of, param_layout  # noqa: E402
from jaxllm.models.step import full_logits  # noqa: E402
from jaxllm.quantization.layout import dequantize_params  # noqa: E402

SMALL = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
)
E = 4
# name -> (HF config class, its MoE fields, GGUF architecture, HF MoE block, expert projections)
CASES = {
    "mixtral": (
        transformers.MixtralConfig,
        dict(num_local_experts=E, num_experts_per_tok=2, sliding_window=None),
        "llama",
        "block_sparse_moe",
        ("w1", "w3", "w2"),
    ),
    "qwen3-moe": (
        transformers.Qwen3MoeConfig,
        dict(num_experts=E, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True),
        "qwen3moe",
        "mlp",
        ("gate_proj", "up_proj", "down_proj"),
    ),
    "qwen2-moe": (
        transformers.Qwen2MoeConfig,
        dict(
            num_experts=E,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
        ),
        "qwen2moe",
        "mlp",
        ("gate_proj", "up_proj", "down_proj"),
    ),
}
ATTN = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
SHARED = {"gate_proj": "ffn_gate_shexp", "up_proj": "ffn_up_shexp", "down_proj": "ffn_down_shexp"}


def gguf_file(
    name, folder, path, *, qtype=QT.F32, shexp_gate_vector=True, experts_in=None, meta=None
):
    """Write the HF folder's model as llama.cpp lays it out. `qtype`: of the attention, expert,
    shared-expert and router matrices (norms, embedding and LM head stay F32); `experts_in`: GGUF
    name -> expert count to write instead of E (a broken file); `meta`: more metadata."""
    cls, extra, arch, block, projs = CASES[name]
    cfg = cls(**SMALL, **extra)
    sd = load_file(f"{folder}/model.safetensors")
    L, H, KV = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    t = {
        "token_embd.weight": sd["model.embed_tokens.weight"],
        "output_norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
    }
    mats = set()
    for i in range(L):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        t[b + "attn_norm.weight"] = sd[p + "input_layernorm.weight"]
        t[b + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
        for hf, g in ATTN.items():
            for kind in ("weight", "bias"):
                w = sd.get(f"{p}self_attn.{hf}.{kind}")
                if w is not None and arch == "llama" and hf in ("q_proj", "k_proj"):
                    w = llamacpp_permute(w, H if hf == "q_proj" else KV)
                if w is not None:
                    t[f"{b}{g}.{kind}"] = w
            mats.add(f"{b}{g}.weight")
        for n in ("q_norm", "k_norm"):
            if f"{p}self_attn.{n}.weight" in sd:
                t[f"{b}attn_{n}.weight"] = sd[f"{p}self_attn.{n}.weight"]
        t[b + "ffn_gate_inp.weight"] = sd[f"{p}{block}.gate.weight"]
        for g, hf in zip(("gate", "up", "down"), projs):
            gname = f"{b}ffn_{g}_exps.weight"
            n = (experts_in or {}).get(gname, E)
            t[gname] = np.stack([sd[f"{p}{block}.experts.{e % E}.{hf}.weight"] for e in range(n)])
        if f"{p}mlp.shared_expert_gate.weight" in sd:
            for hf, g in SHARED.items():
                t[f"{b}{g}.weight"] = sd[f"{p}mlp.shared_expert.{hf}.weight"]
            gate = sd[f"{p}mlp.shared_expert_gate.weight"]  # [1, D]
            t[b + "ffn_gate_inp_shexp.weight"] = gate[0] if shexp_gate_vector else gate
        mats |= {k for k in t if k.startswith(b) and "ffn_" in k and "norm" not in k}
    m = llama_meta(arch, L, cfg.hidden_size, cfg.intermediate_size, H, KV, cfg.vocab_size)
    m[f"{arch}.rope.freq_base"] = float(cfg.rope_parameters["rope_theta"])
    m[f"{arch}.attention.layer_norm_rms_epsilon"] = float(cfg.rms_norm_eps)
    m[f"{arch}.expert_count"] = E
    m[f"{arch}.expert_used_count"] = cfg.num_experts_per_tok
    if arch != "llama":  # Mixtral's expert width is feed_forward_length
        m[f"{arch}.expert_feed_forward_length"] = cfg.moe_intermediate_size
    if getattr(cfg, "shared_expert_intermediate_size", 0):
        m[f"{arch}.expert_shared_feed_forward_length"] = cfg.shared_expert_intermediate_size
    tensors = {k: (np.asarray(v, np.float32), qtype if k in mats else QT.F32) for k, v in t.items()}
    write_gguf(path, arch, m | (meta or {}), tensors)


@pytest.fixture(scope="module")
def moe_files(tmp_path_factory):
    """name -> (HF model, HF folder, F32 GGUF path)."""
    base = tmp_path_factory.mktemp("moe_gguf")
    out = {}
    for name, (cls, extra, *_) in CASES.items():
        folder = base / name
        model = hf_reference.random_hf_model(cls(**SMALL, **extra), folder, norm_noise=0.1)
        path = base / f"{name}.gguf"
        gguf_file(name, folder, path)
        out[name] = (model, str(folder), str(path))
    return out


def hf_logits(model, seq) -> np.ndarray:
    ids = torch.tensor([seq])
    with torch.no_grad():
        return model(ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()


def jax_tree(params):
    import jax

    return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


SEQ = np.random.default_rng(0).integers(0, SMALL["vocab_size"], 13).tolist()


@pytest.mark.parametrize("name", sorted(CASES))
def test_f32_gguf_equals_hf_folder_and_logits(moe_files, name, monkeypatch):
    hf, folder, path = moe_files[name]
    reads = []
    real = gguf.quants.dequantize
    monkeypatch.setattr(gguf.quants, "dequantize", lambda *a: reads.append(1) or real(*a))
    got = load_model(path, dtype="float32", tokenizer=False)
    assert len(reads) == len(open_gguf(path).tensors)  # each stacked tensor dequantized once
    monkeypatch.undo()
    want = load_model(folder, dtype="float32", tokenizer=False)
    c = got.config
    assert c.architecture == type(hf).__name__ and c.quantization is None
    assert (c.num_experts, c.num_experts_per_tok) == (E, 2)
    assert c.moe_intermediate_size == (96 if name == "mixtral" else 32)
    assert c.shared_expert_intermediate_size == (64 if name == "qwen2-moe" else 0)
    assert c.norm_topk_prob == (name != "qwen2-moe")  # the default of each family's files
    assert c.qk_norm == (name == "qwen3-moe") and c.attention_bias == (name == "qwen2-moe")
    assert c.rms_norm_eps == pytest.approx(want.config.rms_norm_eps, rel=1e-6)  # float32 in GGUF
    # the rest as the HF folder's config (whose eos ids the file names only in part)
    assert c == want.config.replace(eos_token_ids=c.eos_token_ids, rms_norm_eps=c.rms_norm_eps)
    assert_tree_close(got.params, jax_tree(want.params))
    (ours,) = full_logits(got.params, c, [SEQ], block_size=16, backend="cpu")
    np.testing.assert_allclose(ours, hf_logits(hf, SEQ), atol=1e-4, rtol=0)


def test_q8_0_gguf_keeps_dense_kernels_and_dequantizes_experts(moe_files, tmp_path):
    """Qwen2-MoE with Q8_0 attention, experts, router and shared expert (its gate [1, D] here)."""
    hf, folder, _ = moe_files["qwen2-moe"]
    hf = copy.deepcopy(hf)  # its weights are round-tripped below
    path = tmp_path / "q8.gguf"
    gguf_file("qwen2-moe", folder, path, qtype=QT.Q8_0, shexp_gate_vector=False)
    got = load_model(str(path), dtype="float32", tokenizer=False)
    kept = dict(got.config.quantization.formats)
    attn = {("layers", "self_attn", p, "kernel") for p in ATTN}
    shared = {("layers", "mlp", "shared_expert", p, "kernel") for p in SHARED}
    assert kept == {p: "q8_0" for p in attn | shared}
    mlp = got.params["layers"]["mlp"]
    assert mlp["experts"]["gate_proj"].dtype == np.float32
    assert mlp["gate"]["kernel"].dtype == mlp["shared_expert_gate"]["kernel"].dtype == np.float32
    # the float leaves are the Q8_0 round trip of the HF weights: the model HF runs below
    want = jax_tree(load_model(folder, dtype="float32", tokenizer=False).params)
    ref = dequantize_params(got.params, got.config.quantization)
    for spec in param_layout(got.config):
        if spec.transpose and spec.path[0] == "layers":
            leaf = want
            for k in spec.path[:-1]:
                leaf = leaf[k]
            w = leaf[spec.path[-1]]
            axes = (*range(w.ndim - 2), w.ndim - 1, w.ndim - 2)  # back to HF [out, in]
            leaf[spec.path[-1]] = roundtrip(w.transpose(axes), QT.Q8_0).transpose(axes)
    assert_tree_close(ref, want)
    # and the kept model runs: HF's logits on the round-tripped weights
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if p.ndim >= 2 and "embed" not in pname and "lm_head" not in pname:
                q = roundtrip(p.reshape(-1, p.shape[-1]).numpy(), QT.Q8_0).reshape(p.shape)
                p.copy_(torch.from_numpy(q))
    (ours,) = full_logits(got.params, got.config, [SEQ], block_size=16, backend="cpu")
    np.testing.assert_allclose(ours, hf_logits(hf, SEQ), atol=1e-4, rtol=0)


def test_expert_count_mismatch_names_tensor(moe_files, tmp_path):
    _, folder, _ = moe_files["qwen3-moe"]
    path = tmp_path / "bad.gguf"
    gguf_file("qwen3-moe", folder, path, experts_in={"blk.1.ffn_up_exps.weight": E - 1})
    with pytest.raises(ValueError, match=r"bad\.gguf.*'blk\.1\.ffn_up_exps\.weight'.*4 experts"):
        load_model(str(path), dtype="float32", tokenizer=False)


def file_config(path):
    from jaxllm.model_loader.hf import config_from_hf

    path = str(path)
    return config_from_hf(gguf_to_hf_config(open_gguf(path), path), "float32", path)


def test_names_are_gguf_constants_and_norm_key(moe_files, tmp_path):
    """Every tensor the MoE layouts read is one gguf.constants lists for the file's architecture
    (and the files hold nothing else); `{arch}.expert_weights_norm` overrides the default."""
    from gguf.constants import MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES

    arch_of = {v: k for k, v in MODEL_ARCH_NAMES.items()}
    for name, (_, _, path) in moe_files.items():
        arch = CASES[name][2]
        allowed = {
            TENSOR_NAMES[t].format(bid=i) + suffix
            for t in MODEL_TENSORS[arch_of[arch]]
            for i in range(SMALL["num_hidden_layers"])
            for suffix in (".weight", ".bias")
        }
        config = file_config(path)
        layout = layout_of(config)
        read = {
            layout.hf_to_gguf_name(hf)
            for spec in param_layout(config)
            for _, hf in spec.hf_tensors()
        }
        assert read <= allowed, (name, sorted(read - allowed))
        assert read <= layout.gguf_tensor_names(config)
        assert {t.name for t in open_gguf(path).tensors} == read
    _, folder, _ = moe_files["qwen3-moe"]
    path = tmp_path / "no-norm.gguf"
    gguf_file("qwen3-moe", folder, path, meta={"qwen3moe.expert_weights_norm": False})
    assert file_config(path).norm_topk_prob is False
