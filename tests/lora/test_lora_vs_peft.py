"""LoRA adapters through jaxllm equal HF transformers + peft, token for token (greedy), SmolLM2.

One engine serves three PEFT adapters of different ranks, alphas, rsLoRA and targets plus the base
model, mixed in one batch; adapters are unloaded and swapped while requests run; bad adapters
fail with clear errors and leave the other requests alone. HF+peft's greedy tokens are checked in
one forward pass per sequence (`hf_greedy_tokens`), which keeps the module fast on two cores."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peft_adapters import ADAPTERS, hf_greedy_tokens, make_adapters  # noqa: E402

from jaxllm import LLM, LoRARequest, SamplingParams  # noqa: E402

NEW = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW, min_tokens=NEW)
TEXTS = ["The capital of France is a city where", "Once upon a time, in a small village, there"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """On a busy 2-core machine, 2 torch threads run HF's forward passes several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hf_setup(smollm2_hf, tmp_path_factory):
    """(peft model over a copy of the session's HF SmolLM2, {name: adapter folder}); the session's
    model is left untouched (peft wraps its model in place, and merging rewrites its weights)."""
    import copy

    base = copy.deepcopy(smollm2_hf).eval()
    return make_adapters(base, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def prompts(smollm2):
    return [smollm2.tokenizer.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def lora_requests(hf_setup):
    _, paths = hf_setup
    return {name: LoRARequest(name, i + 1, paths[name]) for i, name in enumerate(ADAPTERS)}


@pytest.fixture(scope="module")
def llm(smollm2):
    return LLM(smollm2, max_model_len=128, max_num_seqs=8, enable_lora=True, max_loras=3)


@pytest.fixture(scope="module")
def reference(hf_setup, prompts, llm):
    """reference(adapter name or None, prompt index, tokens): HF+peft's greedy choices along
    `tokens` (adapter applied, not merged); equal to `tokens` iff HF generates them."""
    peft_model, _ = hf_setup
    eos = llm.llm_engine.eos_token_ids
    memo: dict = {}

    def check(name, i: int, tokens: list[int]) -> list[int]:
        key = (name, i, tuple(tokens))
        if key not in memo:
            if name is None:
                with peft_model.disable_adapter():
                    memo[key] = hf_greedy_tokens(peft_model, prompts[i], tokens, eos)
            else:
                peft_model.set_adapter(name)
                memo[key] = hf_greedy_tokens(peft_model, prompts[i], tokens, eos)
        return memo[key]

    return check


@pytest.fixture(scope="module")
def mixed_batch(llm, prompts, lora_requests):
    """{adapter name or None: [tokens per prompt]}: one batch of every prompt under the base model
    and each adapter."""
    names = [None, *ADAPTERS]
    batch = [(i, n) for n in names for i in range(len(prompts))]
    outs = llm.generate(
        [prompts[i] for i, _ in batch],
        GREEDY,
        lora_request=[None if n is None else lora_requests[n] for _, n in batch],
        use_tqdm=False,
    )
    got: dict = {n: [] for n in names}
    for out, (_, n) in zip(outs, batch):
        got[n].append(out.outputs[0].token_ids)
    return got


def test_mixed_batch_of_three_adapters_and_base_equals_peft(mixed_batch, reference):
    for n, token_lists in mixed_batch.items():
        for i, tokens in enumerate(token_lists):
            assert len(tokens) == NEW
            assert reference(n, i, tokens) == tokens, n
    for n in ADAPTERS:  # non-zero B: every adapter shows in the tokens
        assert mixed_batch[n] != mixed_batch[None], n


def test_prefix_cache_is_per_adapter(llm, prompts, lora_requests):
    long_prompt = prompts[1] * 3  # full blocks to share
    (base,) = llm.generate([long_prompt], GREEDY, use_tqdm=False)
    (again,) = llm.generate([long_prompt], GREEDY, use_tqdm=False)
    assert again.num_cached_tokens > 0  # the base model's blocks are cached ...
    lora = lora_requests["attn-r8"]
    (adapted,) = llm.generate([long_prompt], GREEDY, lora_request=lora, use_tqdm=False)
    assert adapted.num_cached_tokens == 0  # ... but not under the adapter's key
    (adapted2,) = llm.generate([long_prompt], GREEDY, lora_request=lora, use_tqdm=False)
    assert adapted2.num_cached_tokens > 0
    assert adapted2.outputs[0].token_ids == adapted.outputs[0].token_ids
    assert adapted.outputs[0].token_ids != base.outputs[0].token_ids


def test_unload_and_swap_while_running(llm, prompts, lora_requests, reference):
    """Four adapters (a fourth id on the first one's folder) over max_loras=3 slots: the
    scheduler holds one back, slots are swapped, and an adapter unloaded mid-run still serves
    its queued requests."""
    engine = llm.llm_engine
    a, b, c = (lora_requests[n] for n in ADAPTERS)
    d = LoRARequest("attn-r8-copy", 40, a.lora_path)
    want = {}
    for lora in (a, b):
        for i, p in enumerate(prompts):
            want[engine.add_request(None, p, GREEDY, lora_request=lora)] = (lora, i)
    writes = engine.runner.lora.num_slot_writes
    got = {}
    most = 0
    for step in range(80):
        if not engine.has_unfinished_requests():
            break
        if step == 2:  # unload a running adapter, queue two more and the base model
            assert engine.remove_lora(a.lora_int_id)
            assert a.lora_int_id not in engine.list_loras()
            for lora in (d, c, None):
                for i, p in enumerate(prompts):
                    want[engine.add_request(None, p, GREEDY, lora_request=lora)] = (lora, i)
        for out in engine.step():
            if out.finished:
                got[out.request_id] = out.outputs[0].token_ids
        most = max(most, len({r.lora_int_id for r in engine.scheduler.running} - {0}))
    assert most == 3  # d waited for a slot
    assert set(got) == set(want)
    name = {a: "attn-r8", b: "all-r16-rslora", c: "mlp-r4", d: "attn-r8", None: None}
    for rid, (lora, i) in want.items():
        assert reference(name[lora], i, got[rid]) == got[rid], (rid, lora)
    assert engine.runner.lora.num_slot_writes > writes  # d needed a slot of its own


def _write_adapter(folder, config: dict, tensors: dict) -> str:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return str(folder)


def test_bad_adapters_fail_clearly_and_others_run(
    llm, prompts, lora_requests, reference, tmp_path, hf_setup
):
    import numpy as np

    _, paths = hf_setup
    good = lora_requests["attn-r8"]
    # rank above max_lora_rank: a rank-32 adapter
    with open(os.path.join(paths["attn-r8"], "adapter_config.json")) as f:
        cfg = json.load(f)
    big = _write_adapter(
        tmp_path / "big",
        {**cfg, "r": 32},
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros(
                (32, 576), np.float32
            ),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros(
                (576, 32), np.float32
            ),
        },
    )
    # another base model's shapes (hidden 64)
    other = _write_adapter(
        tmp_path / "other",
        {**cfg, "r": 4},
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros(
                (4, 64), np.float32
            ),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros(
                (64, 4), np.float32
            ),
        },
    )
    dora = _write_adapter(tmp_path / "dora", {**cfg, "use_dora": True}, {})
    cases = [
        (LoRARequest("big", 50, big), "above max_lora_rank"),
        (LoRARequest("other", 51, other), "another base model"),
        (LoRARequest("missing", 52, str(tmp_path / "nope")), "no such folder"),
        (LoRARequest("dora", 53, dora), "use_dora"),
    ]
    engine = llm.llm_engine
    running = engine.add_request(None, prompts[0], GREEDY, lora_request=good)
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            llm.generate(prompts, GREEDY, lora_request=[good, bad], use_tqdm=False)
        with pytest.raises(ValueError, match=message):
            engine.add_request(None, prompts[1], GREEDY, lora_request=bad)
        assert bad.lora_int_id not in engine.list_loras()
    got = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == running and out.finished:
                got = out.outputs[0].token_ids
    assert got is not None and reference("attn-r8", 0, got) == got


def test_merged_adapter_equals(llm, hf_setup, prompts, mixed_batch):
    """Last in the module: merging rewrites the peft model's weights."""
    peft_model, _ = hf_setup
    name = "all-r16-rslora"
    peft_model.set_adapter(name)
    merged = peft_model.merge_and_unload(adapter_names=[name])
    for p, got in zip(prompts, mixed_batch[name]):
        assert hf_greedy_tokens(merged, p, got, llm.llm_engine.eos_token_ids) == got
