"""JAXLLM_COMPILER_OPTIONS: parsed into per-executable XLA options; a bad item or an option XLA
does not know is a ValueError that names the variable."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxllm.engine.compiler_options import (
    DEFAULT_OPTIONS,
    ENV_VAR,
    compiler_options_from_env,
    parse_compiler_options,
)


def test_parse_values():
    assert parse_compiler_options(None) == {}
    assert parse_compiler_options(" ") == {}
    assert parse_compiler_options("xla_gpu_autotune_level=0, a=true,b=1.5,c=x") == {
        "xla_gpu_autotune_level": 0,
        "a": True,
        "b": 1.5,
        "c": "x",
    }


@pytest.mark.parametrize("bad", ["xla_gpu_autotune_level", "=0", "a=", "a=1,b"])
def test_bad_items_name_the_variable(bad):
    with pytest.raises(ValueError, match=ENV_VAR):
        parse_compiler_options(bad)


def test_platform_defaults_apply_only_when_the_variable_is_unset(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert compiler_options_from_env("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert compiler_options_from_env("gpu") == {"xla_gpu_dot_merger_threshold_mb": 0}
    monkeypatch.setenv(ENV_VAR, "xla_gpu_autotune_level=0")
    assert compiler_options_from_env("cpu") == {"xla_gpu_autotune_level": 0}  # exactly those
    lowered = jax.jit(lambda x: x @ x).lower(jnp.ones((4, 4)))  # XLA:CPU takes the default
    exe = lowered.compile(compiler_options=DEFAULT_OPTIONS["cpu"])
    assert float(exe(jnp.ones((4, 4)))[0, 0]) == 4.0


def test_options_reach_xla():
    """The parsed dict is what `Lowered.compile` takes: XLA accepts a real option and names an
    unknown one (the runner turns the latter into a ValueError naming the variable)."""
    lowered = jax.jit(lambda x: x @ x).lower(jnp.ones((4, 4)))
    exe = lowered.compile(compiler_options=parse_compiler_options("xla_gpu_autotune_level=0"))
    assert float(exe(jnp.ones((4, 4)))[0, 0]) == 4.0
    with pytest.raises(Exception, match="compile option"):
        lowered.compile(compiler_options=parse_compiler_options("xla_no_such_option=1"))


def test_engine_names_the_variable_for_an_unknown_option(smollm2, monkeypatch):
    from jaxllm import LLM, SamplingParams

    monkeypatch.setenv(ENV_VAR, "xla_no_such_option=1")
    llm = LLM(smollm2, max_model_len=32, max_num_seqs=1, max_num_batched_tokens=16)
    with pytest.raises(ValueError, match=f"{ENV_VAR}.*xla_no_such_option"):
        llm.generate("Hi", SamplingParams(max_tokens=1), use_tqdm=False)
