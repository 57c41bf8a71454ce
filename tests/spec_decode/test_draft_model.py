"""Draft-model speculation on SmolLM2-135M (float32, CPU): greedy outputs equal the target's own
without speculation through chunked prefill, preemption (recompute and swap) and prefix-cache
hits; seeded n = 2 samples too. A tiny random-weight Llama of SmolLM2's vocabulary as the draft
exercises the mechanics at near-zero acceptance; SmolLM2 itself as the draft accepts nearly every
token, which it only does while its KV cache holds every token the target computed (the bonus
token, multi-token acceptance and rollback all run). A tiny model drafting for itself at
tensor_parallel_size 2 runs in a subprocess with 2 virtual CPU devices (draft_tp_worker.py)."""

from __future__ import annotations

import json
import os

import pytest
from worker_process import run_worker

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_reference  # noqa: E402

from jaxllm import LLM, SamplingParams  # noqa: E402
from jaxllm.config import CacheConfig, EngineConfig, SchedulerConfig  # noqa: E402
from jaxllm.engine.llm_engine import LLMEngine  # noqa: E402
from jaxllm.model_loader import load_model  # noqa: E402
from jaxllm.spec_decode import SpeculativeConfig  # noqa: E402

K = 3
WORKER = os.path.join(os.path.dirname(__file__), "draft_tp_worker.py")
# Small enough to chunk the prompts (32 tokens a step) and to preempt: 10 usable blocks of
# 16 tokens for four sequences of up to 59 tokens (one prefix block shared) plus lookahead slots.
ENGINE = dict(
    dtype="float32",
    max_model_len=128,
    max_num_seqs=4,
    max_num_batched_tokens=32,
    num_gpu_blocks_override=11,
    block_size=16,
    enable_prefix_caching=True,
)
PREFIX = (
    "You are a helpful assistant. Write a long and detailed paragraph on the topic below, with "
    "examples. Topic: "
)
PROMPTS = [
    PREFIX + "the history of Paris.",
    "The quick brown fox jumps over the lazy dog. " * 4 + "Then the fox",
    PREFIX + "why the sky is blue.",
    PREFIX + "how spiders build their webs.",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=16)
# n = 2 from a 16-token prompt: the fork step's lookahead block must not be shared (kv_cache fork)
SAMPLED = SamplingParams(temperature=0.8, n=2, seed=7, max_tokens=12)


def _fork_prompt(llm: LLM) -> dict:
    ids = llm.get_tokenizer().encode("Write a short poem about the sea, the wind and the sky.")
    return {"prompt_token_ids": ids[:16]}


def _ids(outputs) -> list[list[list[int]]]:
    return [[list(c.token_ids) for c in o.outputs] for o in outputs]


@pytest.fixture(scope="module")
def reference(smollm2_path):
    """The target's own outputs (no speculation) for PROMPTS (greedy) and the fork prompt."""
    llm = LLM("smollm2-135m", **ENGINE)
    greedy = _ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    sampled = _ids(llm.generate([_fork_prompt(llm)], SAMPLED, use_tqdm=False))
    return greedy, sampled


@pytest.fixture(scope="module")
def random_draft(tmp_path_factory) -> str:
    cfg = transformers.LlamaConfig(
        vocab_size=49152,  # SmolLM2's
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    folder = tmp_path_factory.mktemp("draft")
    hf_reference.random_hf_model(cfg, folder)
    return str(folder)


def _spec(model: str) -> dict:
    return {"method": "draft_model", "model": model, "num_speculative_tokens": K}


def test_random_draft_keeps_outputs_through_chunking_preemption_and_prefix_hits(
    reference, random_draft
):
    llm = LLM("smollm2-135m", speculative_config=_spec(random_draft), **ENGINE)
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert _ids(outputs) == reference[0]
    # a prompt longer than a step's budget: prefilled in chunks
    assert max(len(o.prompt_token_ids) for o in outputs) > ENGINE["max_num_batched_tokens"]
    engine = llm.llm_engine
    assert engine.proposer.num_lookahead_tokens == K
    assert engine.scheduler.num_preemptions_total > 0
    assert engine.scheduler.prefix_cache_stats.hits > 0
    assert engine.spec_stats.num_draft_tokens > 0
    assert _ids(llm.generate([_fork_prompt(llm)], SAMPLED, use_tqdm=False)) == reference[1]


def test_smollm2_as_its_own_draft_accepts_nearly_all_with_swap(reference):
    # swap preemption: the draft's cache mirrors the swap-outs and swap-ins (else the resumed
    # requests' drafts would come from garbage KV and be rejected)
    llm = LLM(
        "smollm2-135m",
        preemption_mode="swap",
        speculative_config=_spec("smollm2-135m"),
        **ENGINE,
    )
    assert _ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == reference[0]
    engine = llm.llm_engine
    stats = engine.spec_stats
    assert engine.scheduler.num_swapped_out_total > 0
    assert engine.scheduler.prefix_cache_stats.hits > 0
    assert stats.acceptance_rate > 0.9, stats
    assert len(stats.accepted_per_position) == K and stats.accepted_per_position[K - 1] > 0
    assert _ids(llm.generate([_fork_prompt(llm)], SAMPLED, use_tqdm=False)) == reference[1]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[int, str]:
    """Tiny random Llamas by vocabulary size: 300 (the target), 320 (another vocabulary)."""
    folders = {}
    for vocab in (300, 320):
        cfg = transformers.LlamaConfig(
            **{**hf_reference.TINY_CONFIG, "vocab_size": vocab},
            intermediate_size=128,
            num_hidden_layers=2,
        )
        folder = tmp_path_factory.mktemp(f"tiny{vocab}")
        hf_reference.random_hf_model(cfg, folder)
        folders[vocab] = str(folder)
    return folders


def test_a_draft_with_another_vocabulary_is_refused(tiny_models):
    with pytest.raises(ValueError, match="vocabulary of 320 tokens, the target's has 300"):
        LLM(tiny_models[300], max_model_len=64, speculative_config=_spec(tiny_models[320]))


def test_an_already_loaded_draft_model(tiny_models, monkeypatch):
    # LLMEngine(draft_model=LoadedModel) loads nothing more; the model drafts for itself
    loaded = load_model(tiny_models[300], dtype="float32")

    def no_load(*args, **kwargs):
        raise AssertionError("the draft model was loaded again")

    monkeypatch.setattr("jaxllm.model_loader.load_model", no_load)
    config = EngineConfig(
        model=loaded.config,
        cache=CacheConfig(num_gpu_blocks=16),
        scheduler=SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=16, max_model_len=64),
    )
    spec = SpeculativeConfig.from_value(_spec(tiny_models[300]))
    engine = LLMEngine(config, loaded.params, speculative_config=spec, draft_model=loaded)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    for n in (5, 21):
        engine.add_request(str(n), list(range(10, 10 + n)), params)
    lengths = {}
    while engine.has_unfinished_requests():
        lengths.update({o.request_id: len(o.outputs[0].token_ids) for o in engine.step()})
    assert lengths == {"5": 10, "21": 10}
    assert engine.spec_stats.acceptance_rate > 0.9


def test_tensor_parallel_draft_runs_on_the_targets_mesh(tiny_models, tmp_path):
    out = tmp_path / "tp.json"
    run_worker(WORKER, [str(out), tiny_models[300]])
    seen = json.loads(out.read_text())
    assert seen["spec"] == seen["plain"]
    assert seen["draft_devices"] == 2
    assert seen["acceptance_rate"] > 0.9  # the model drafting for itself
