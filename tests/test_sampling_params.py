"""SamplingParams: vLLM's defaults, normalizations and validation errors."""

import ast
from pathlib import Path

import pytest

from jaxllm import sampling_metadata, sampling_params
from jaxllm.sampling_params import SamplingParams, SamplingType

# vLLM's SamplingParams defaults (vllm/sampling_params.py, fields and from_optional signature).
VLLM_DEFAULTS = dict(
    n=1,
    best_of=None,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    repetition_penalty=1.0,
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    min_p=0.0,
    seed=None,
    stop=[],
    stop_token_ids=[],
    ignore_eos=False,
    max_tokens=16,
    min_tokens=0,
    logprobs=None,
    prompt_logprobs=None,
    detokenize=True,
    skip_special_tokens=True,
    spaces_between_special_tokens=True,
    include_stop_str_in_output=False,
    logit_bias=None,
    truncate_prompt_tokens=None,
)


@pytest.mark.parametrize("module", [sampling_params, sampling_metadata])
def test_host_modules_do_not_import_jax(module):
    tree = ast.parse(Path(module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert not imported & {"jax", "jaxlib", "flax"}


def test_defaults_equal_vllm():
    p = SamplingParams()
    for name, value in VLLM_DEFAULTS.items():
        assert getattr(p, name) == value, name
    assert p.sampling_type == SamplingType.RANDOM
    assert p.output_text_buffer_length == 0


def test_normalizations():
    p = SamplingParams(stop="###", stop_token_ids=[5, 7, 5], seed=-1, top_k=-1)
    assert p.stop == ["###"] and p.stop_token_ids == [5, 7] and p.seed is None and p.top_k == 0
    assert p.output_text_buffer_length == 2
    assert (
        SamplingParams(
            stop=["ab", "abcd"], include_stop_str_in_output=True
        ).output_text_buffer_length
        == 0
    )
    assert SamplingParams(logit_bias={"12": 1.5, 3: -2}).logit_bias == {12: 1.5, 3: -2}
    assert SamplingParams(temperature=1e-3).temperature == pytest.approx(1e-2)
    assert SamplingParams(max_tokens=None).max_tokens is None


def test_sampling_type_and_greedy_reset():
    g = SamplingParams(temperature=0.0, top_p=0.5, top_k=10, min_p=0.3)
    assert g.sampling_type == SamplingType.GREEDY
    assert (g.top_p, g.top_k, g.min_p) == (1.0, 0, 0.0)
    assert SamplingParams(seed=3).sampling_type == SamplingType.RANDOM_SEED
    assert SamplingParams(temperature=0.0, seed=3).sampling_type == SamplingType.GREEDY


def test_clone_is_deep():
    p = SamplingParams(stop=["x"], logit_bias={1: 2.0})
    q = p.clone()
    q.stop.append("y")
    q.logit_bias[2] = 1.0
    assert p.stop == ["x"] and p.logit_bias == {1: 2.0}
    assert q == SamplingParams(stop=["x", "y"], logit_bias={1: 2.0, 2: 1.0})


def test_generation_config_eos():
    p = SamplingParams(stop_token_ids=[9])
    p.update_from_generation_config({"eos_token_id": [2, 3]}, eos_token_id=2)
    assert p.eos_token_id == 2
    assert p.all_stop_token_ids == {2, 3, 9}
    assert p.stop_token_ids == [9, 3]
    q = SamplingParams(ignore_eos=True)
    q.update_from_generation_config({"eos_token_id": 4}, eos_token_id=2)
    assert q.eos_token_id is None and q.stop_token_ids == [] and q.all_stop_token_ids == {2, 4}


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(min_p=-0.1), "min_p"),
        (dict(min_p=1.1), "min_p"),
        (dict(n=0), "n"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(min_tokens=-1), "min_tokens"),
        (dict(min_tokens=20, max_tokens=10), "min_tokens"),
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(presence_penalty=-2.5), "presence_penalty"),
        (dict(frequency_penalty=3.0), "frequency_penalty"),
        (dict(frequency_penalty=-3.0), "frequency_penalty"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
        (dict(logprobs=-2), "logprobs"),
        (dict(prompt_logprobs=-5), "prompt_logprobs"),
        (dict(n=3, best_of=2), "best_of"),
        (dict(seed=1.5), "seed"),
        (dict(seed="7"), "seed"),
        (dict(logit_bias={5: 101.0}), "logit_bias"),
        (dict(logit_bias={5: -100.5}), "logit_bias"),
        (dict(logit_bias={"abc": 1.0}), "logit_bias"),
        (dict(logit_bias={-3: 1.0}), "logit_bias"),
        (dict(stop=["ok", ""]), "stop"),
        (dict(stop=""), "stop"),
        (dict(stop_token_ids=[1, -2]), "stop_token_ids"),
        (dict(truncate_prompt_tokens=0), "truncate_prompt_tokens"),
        (dict(temperature=0.0, n=2), "n"),
    ],
)
def test_invalid_values_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(temperature=-0.25), "-0.25"),
        (dict(top_k=-7), "-7"),
        (dict(max_tokens=0), "got 0"),
        (dict(logit_bias={5: 150.0}), "150.0"),
        (dict(min_tokens=20, max_tokens=10), "20"),
    ],
)
def test_error_messages_name_the_value(kwargs, text):
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    assert text in str(err.value)


def test_boundary_values_accepted():
    SamplingParams(
        top_p=1.0,
        min_p=0.0,
        presence_penalty=-2.0,
        frequency_penalty=2.0,
        logprobs=-1,
        prompt_logprobs=0,
        min_tokens=16,
        max_tokens=16,
        logit_bias={0: -100.0, 1: 100},
        best_of=2,
        n=2,
        seed=0,
        truncate_prompt_tokens=1,
    )
