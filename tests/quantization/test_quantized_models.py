"""Quantized models against their float selves: SmolLM2's GGUF kept in Q4_1/Q8_0 blocks equals
the dequantized model; int8 and fp8 stay within stated bounds of the float model on real text
(SmolLM2) and on tiny random Llama and Qwen3 models; the engine, the CLI flag and bad input."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_reference  # noqa: E402

from jaxllm import LLM, SamplingParams  # noqa: E402
from jaxllm.model_loader import load_model  # noqa: E402
from jaxllm.model_loader.gguf import load_gguf  # noqa: E402
from jaxllm.model_loader.gguf_reader import open_gguf  # noqa: E402
from jaxllm.models.packed_params import use_cpu_ext  # noqa: E402
from jaxllm.models.step import full_logits, step_params  # noqa: E402

TEXT = os.path.join(os.path.dirname(__file__), "..", "data", "quantization_text.txt")
POSITIONS = 512


@pytest.fixture(scope="module")
def smol_float(smollm2_path):
    """SmolLM2 with every tensor dequantized to float32 (the reference of the kept blocks)."""
    return load_gguf(smollm2_path, tokenizer=True, keep_quantized=False)


@pytest.fixture(scope="module")
def text_ids(smol_float):
    with open(TEXT) as f:
        ids = smol_float.tokenizer(f.read())["input_ids"]
    assert len(ids) > POSITIONS
    return ids[: POSITIONS + 1]


@pytest.fixture(scope="module")
def float_logits(smol_float, text_ids):
    return full_logits(smol_float.params, smol_float.config, [text_ids])[0][:POSITIONS]


def compare(logits: np.ndarray, ref: np.ndarray, ids: list[int]) -> dict:
    """Top-1 agreement, mean KL(ref || logits) and the perplexity ratio on the next tokens."""
    lp = logits - np.logaddexp.reduce(logits, -1, keepdims=True)
    lr = ref - np.logaddexp.reduce(ref, -1, keepdims=True)
    nxt = np.asarray(ids[1 : len(logits) + 1])
    rows = np.arange(len(logits))
    return {
        "agree": float((logits.argmax(-1) == ref.argmax(-1)).mean()),
        "kl": float((np.exp(lr) * (lr - lp)).sum(-1).mean()),
        "ppl_ratio": float(np.exp(lr[rows, nxt].mean() - lp[rows, nxt].mean())),
    }


def test_smollm2_gguf_keeps_its_blocks(smollm2_path):
    """The default load keeps the file's Q4_1 layers and Q8_0 embedding: the parameter bytes are
    the file's tensor bytes (within 10%; they are equal)."""
    loaded = load_model("smollm2-135m", tokenizer=False)
    q = loaded.config.quantization
    assert q is not None and q.method == "gguf"
    assert dict(q.formats)[("embed_tokens", "embedding")] == "q8_0"
    assert dict(q.formats)[("layers", "mlp", "down_proj", "kernel")] == "q4_1"
    file_bytes = sum(int(t.n_bytes) for t in open_gguf(smollm2_path).tensors)
    param_bytes = sum(a.nbytes for a in jax.tree.leaves(loaded.params))
    assert abs(param_bytes - file_bytes) <= 0.1 * file_bytes
    assert param_bytes == file_bytes


@pytest.mark.parametrize("kernels", ["xla", "ext"])
def test_smollm2_gguf_logits_equal_the_dequantized_model(
    smollm2_path, smol_float, text_ids, float_logits, kernels, monkeypatch
):
    """The kept blocks are the same numbers as the dequantized weights: logits within 1e-4,
    through XLA's ops and through cpu_ext's kernels (the engine's CPU layout)."""
    if kernels == "ext" and not use_cpu_ext():
        pytest.skip("cpu_ext cannot run here")
    monkeypatch.setenv("JAXLLM_CPU_KERNELS", kernels)
    loaded = load_model("smollm2-135m", tokenizer=False)
    # the engine's CPU layout: stacked, cpu_ext's leaves read in place, q/k/v and gate/up joined
    params = step_params(loaded.params, platform="cpu", per_layer=False, packed=kernels == "ext")
    if kernels == "ext":
        assert set(params["packed_layers"]["mlp"]) == {"gate_up_proj", "down_proj"}
        assert set(params["packed_layers"]["self_attn"]) == {"qkv_proj", "o_proj"}
    got = full_logits(params, loaded.config, [text_ids[:128]])[0]
    np.testing.assert_allclose(got, float_logits[:128], atol=1e-4, rtol=0)


# bounds a little looser than measured on this text (the numbers: bench/RESULTS.md)
BOUNDS = {
    "int8": {"agree": 0.95, "kl": 0.005, "ppl": 0.02},
    "fp8": {"agree": 0.89, "kl": 0.03, "ppl": 0.025},
}


@pytest.mark.parametrize("method", ["int8", "fp8"])
def test_smollm2_quantized_within_bounds(method, smollm2_path, text_ids, float_logits):
    loaded = load_model("smollm2-135m", tokenizer=False, quantization=method)
    assert loaded.config.quantization.method == method
    params = step_params(loaded.params, platform="cpu")
    got = full_logits(params, loaded.config, [text_ids])[0][:POSITIONS]
    s = compare(got, float_logits, text_ids)
    b = BOUNDS[method]
    assert s["agree"] >= b["agree"] and s["kl"] < b["kl"], s
    assert abs(s["ppl_ratio"] - 1) < b["ppl"], s


TINY = dict(
    vocab_size=300,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=512,
    initializer_range=0.02,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny_quant")
    out = {}
    for name, cls in (("llama", transformers.LlamaConfig), ("qwen3", transformers.Qwen3Config)):
        hf_reference.random_hf_model(cls(**TINY), base / name, norm_noise=0.1)
        out[name] = str(base / name)
    return out


# KL(float || quantized) and top-1 agreement where the float model's top two logits differ by
# more than a tenth of the logits' std (random models have many near-ties); measured in
# bench/RESULTS.md
TINY_BOUNDS = {"int8": (1e-4, 0.99), "fp8": (1e-3, 0.95)}


@pytest.mark.parametrize("method", ["int8", "fp8"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tiny_random_models_quantized_within_bounds(tiny_models, arch, method):
    ids = list(np.random.default_rng(0).integers(3, 300, 256))
    ref_model = load_model(tiny_models[arch], tokenizer=False)
    ref = full_logits(ref_model.params, ref_model.config, [ids])[0]
    loaded = load_model(tiny_models[arch], tokenizer=False, quantization=method)
    got = full_logits(step_params(loaded.params, platform="cpu"), loaded.config, [ids])[0]
    s = compare(got, ref, ids + [0])
    top2 = np.sort(ref, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1 * ref.std()
    agree = float((got.argmax(-1) == ref.argmax(-1))[clear].mean())
    max_kl, min_agree = TINY_BOUNDS[method]
    assert s["kl"] < max_kl and agree >= min_agree, (s, agree)


@pytest.mark.parametrize("method", ["int8", "fp8"])
def test_engine_generates_with_quantized_weights(tiny_models, method):
    llm = LLM(tiny_models["llama"], quantization=method, max_model_len=128, max_num_seqs=4)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outs = llm.generate([[5, 6, 7, 8], [9, 10, 11]], params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [8, 8]


def test_bad_quantization_requests(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="'gguf' applies to GGUF files"):
        load_model(tiny_models["llama"], quantization="gguf")
    with pytest.raises(ValueError, match="'awq' is not supported"):
        load_model(tiny_models["llama"], quantization="awq")
    loaded = load_model(tiny_models["llama"])
    with pytest.raises(ValueError, match="pass it to load_model"):
        LLM(loaded, quantization="int8")
