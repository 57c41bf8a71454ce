"""A sliding-window model (tiny random Mistral, window 16, every layer) through the engine frees the
KV blocks that left the window, and still gives HF transformers' greedy tokens (torch, float32):
chunked prefill, a cache small enough to preempt, prefix caching, and n = 2 forks of a prompt
longer than the window."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_reference  # noqa: E402

from jaxllm import LLM, SamplingParams  # noqa: E402

NEW = 10
WINDOW = 16


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    cfg = transformers.MistralConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=WINDOW,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    folder = tmp_path_factory.mktemp("mistral")
    return hf_reference.random_hf_model(cfg, folder), str(folder)


def test_blocks_outside_the_window_are_freed_and_tokens_equal_hf(mistral):
    model, folder = mistral
    rng = np.random.default_rng(3)
    shared = rng.integers(3, 300, 48).tolist()
    prompts = [rng.integers(3, 300, n).tolist() for n in (70, 9, 33, 90)]
    prompts.append(shared + [5, 6, 7])
    prompts.append(shared + [8, 9])  # prefix hits on blocks that left the first one's window
    refs = hf_reference.hf_greedy(model, prompts, NEW)
    llm = LLM(
        folder,
        dtype="float32",
        max_model_len=112,
        max_num_seqs=4,
        max_num_batched_tokens=16,
        num_gpu_blocks_override=14,  # 13 usable: 4 sequences of up to 100 tokens need 28
        block_size=16,
        enable_prefix_caching=True,
    )
    params = SamplingParams(temperature=0.0, max_tokens=NEW, min_tokens=NEW)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == refs
    manager = llm.llm_engine.scheduler.kv_cache_manager
    assert manager.num_windowed_out_total > 0
    # n = 2 samples (top-1: the argmax) of a prompt longer than the window fork a table with
    # null entries
    top1 = SamplingParams(temperature=1.0, top_k=1, max_tokens=NEW, min_tokens=NEW, n=2, seed=0)
    two = llm.generate([prompts[3]], top1, use_tqdm=False)[0]
    assert [c.token_ids for c in two.outputs] == [refs[3], refs[3]]
    assert manager.num_free_blocks == manager.block_pool.num_blocks - 1  # all returned


def test_gemma_style_mixed_layers_free_nothing():
    from jaxllm.config import FULL, SLIDING
    from jaxllm.model_loader.dummy import dummy_config

    mixed = dummy_config("tiny").replace(sliding_window=8, layer_types=(SLIDING, FULL))
    assert mixed.uniform_sliding_window is None
    assert mixed.replace(layer_types=(SLIDING, SLIDING)).uniform_sliding_window == 8
