"""The Flax Llama family equals HF transformers (torch, float32) on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxllm.model_loader import load_model  # noqa: E402
from jaxllm.models.step import full_logits  # noqa: E402

SMALL = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=8,
    max_position_embeddings=512,
)

CASES = {
    "llama-gqa-untied": (transformers.LlamaConfig, dict(num_key_value_heads=2)),
    "llama-mha-tied": (
        transformers.LlamaConfig,
        dict(num_key_value_heads=8, tie_word_embeddings=True),
    ),
    "llama3-rope-scaling": (
        transformers.LlamaConfig,
        dict(
            num_key_value_heads=4,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    # dynamic NTK past max_position_embeddings (the 150-token sequence): the base grows with it
    "llama-dynamic-ntk": (
        transformers.LlamaConfig,
        dict(
            num_key_value_heads=4,
            max_position_embeddings=64,
            rope_scaling={"rope_type": "dynamic", "factor": 2.0},
        ),
    ),
    "mistral": (transformers.MistralConfig, dict(num_key_value_heads=2, sliding_window=None)),
    "qwen2-bias-tied": (
        transformers.Qwen2Config,
        dict(num_key_value_heads=2, tie_word_embeddings=True),
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def hf_pair(request, tmp_path_factory):
    cls, extra = CASES[request.param]
    torch.manual_seed(0)
    cfg = cls(**{**SMALL, **extra})
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
    with torch.no_grad():  # non-trivial norms and biases so a missed weight shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return model, load_model(str(folder), dtype="float32", tokenizer=False)


def test_full_sequence_logits_match_hf(hf_pair):
    hf, loaded = hf_pair
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, SMALL["vocab_size"], n).tolist() for n in (1, 17, 150)]
    ours = full_logits(loaded.params, loaded.config, seqs, block_size=16, backend="reference")
    for seq, got in zip(seqs, ours):
        with torch.no_grad():
            ref = hf(torch.tensor([seq])).logits[0].numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_smollm2_logits_match_hf(smollm2, smollm2_hf):
    tok = smollm2.tokenizer
    texts = ["The capital of France is", "def fibonacci(n):\n    " * 3]
    seqs = [tok.encode(t) for t in texts]
    ours = full_logits(smollm2.params, smollm2.config, seqs, block_size=16, backend="reference")
    for seq, got in zip(seqs, ours):
        with torch.no_grad():
            ref = smollm2_hf(torch.tensor([seq])).logits[0].numpy()
        # The first position (SmolLM2's "massive activation" token) is the hardest: layer 11's
        # MLP down_proj sums 1536 float32 terms to ~22,500, dominated by two huge products, and
        # layers 27-29 cancel it back down. XLA:CPU's YNNPACK dots accumulated it in blocks of
        # 384 (error 1.1e-2 there, torch's 1.1e-3: position 0 landed at 1.3-1.6e-4); the step
        # compiles with YNNPACK off on the CPU (jaxllm/engine/compiler_options.py), Eigen's
        # dots bring it to ~3-4e-5.
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_converted_orbax_checkpoint_reloads_to_identical_logits(hf_pair, tmp_path):
    from jaxllm.model_loader.orbax import save_converted

    _, loaded = hf_pair
    out = save_converted(loaded, str(tmp_path / "converted"))
    again = load_model(out, dtype="float32", tokenizer=False)
    assert again.config == loaded.config
    seqs = [[3, 1, 4, 1, 5, 9, 2, 6], list(range(40))]
    a = full_logits(loaded.params, loaded.config, seqs, backend="reference")
    b = full_logits(again.params, again.config, seqs, backend="reference")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
