"""`jaxllm generate` / `convert` argument handling: flags -> LLM and SamplingParams kwargs, YAML
config merge, prompt files, bad-input errors, and the JSONL written (with a fake LLM injected
through `main(..., llm_factory=...)`, so no model is loaded)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types

import pytest

from jaxllm.entrypoints import cli
from jaxllm.entrypoints.cli_args import (
    CLIError,
    build_parser,
    generate_parser,
    load_config_file,
    resolve_generate_args,
)
from jaxllm.outputs import CompletionOutput, Logprob, RequestOutput
from jaxllm.process_lifetime import kill_with_parent
from jaxllm.sampling_params import SamplingParams


def resolve(argv):
    return resolve_generate_args(build_parser().parse_args(["generate", *argv]))


# ------------------------------------------------------------------------------------ fake engine


def fake_completion(text: str, params, i: int) -> str:
    """What FakeLLM 'generates' for a prompt text (the test recomputes it independently)."""
    return f"{text[::-1]}#{i}"[: params.max_tokens]


class FakeLLM:
    """Stands in for jaxllm.LLM: records its arguments and answers deterministically."""

    instances: list[FakeLLM] = []

    def __init__(self, **engine_kwargs):
        self.engine_kwargs = engine_kwargs
        self.calls = []
        FakeLLM.instances.append(self)

    def _outputs(self, texts, params):
        outs = []
        for r, text in enumerate(texts):
            completions = []
            for i in range(params.n):
                gen = fake_completion(text, params, i)
                ids = [ord(c) for c in gen]
                lps = None
                if params.logprobs is not None:
                    lps = [
                        {t: Logprob(-0.5, 1, chr(t)), 0: Logprob(-math.inf, 2, None)} for t in ids
                    ]
                completions.append(
                    CompletionOutput(
                        i, gen, ids, -0.5 * len(ids) if lps else None, lps, finish_reason="length"
                    )
                )
            plp = None
            if params.prompt_logprobs is not None:
                plp = [None] + [{ord(c): Logprob(-1.0, 3, c)} for c in text[1:]]
            outs.append(
                RequestOutput(
                    str(r),
                    text,
                    [ord(c) for c in text],
                    plp,
                    completions,
                    True,
                    num_cached_tokens=0,
                )
            )
        return outs

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append(("generate", list(prompts), sampling_params, use_tqdm))
        return self._outputs(prompts, sampling_params)

    def chat(self, conversations, sampling_params, use_tqdm=True):
        self.calls.append(("chat", list(conversations), sampling_params, use_tqdm))
        texts = ["|".join(f"{m['role']}:{m['content']}" for m in conv) for conv in conversations]
        return self._outputs(texts, sampling_params)


@pytest.fixture(autouse=True)
def _reset_fake():
    FakeLLM.instances.clear()


def run_cli(argv, capsys):
    return run_cli_with(FakeLLM, argv, capsys)


def run_cli_with(factory, argv, capsys):
    rc = cli.main(argv, llm_factory=factory)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ---------------------------------------------------------------------------------- flag parsing


def test_every_flag_maps_to_its_keyword():
    opts = resolve(
        [
            "hi",
            "--model",
            "m.gguf",
            "--dtype",
            "bfloat16",
            "--max-model-len",
            "512",
            "--max-num-seqs",
            "8",
            "--max-num-batched-tokens",
            "256",
            "--block-size",
            "32",
            "--gpu-memory-utilization",
            "0.5",
            "--num-gpu-blocks",
            "100",
            "--no-enable-prefix-caching",
            "-tp",
            "2",
            "--seed",
            "7",
            "--max-logprobs",
            "5",
            "--attention-backend",
            "pallas",
            "--temperature",
            "0.7",
            "--top-p",
            "0.9",
            "--top-k",
            "40",
            "--min-p",
            "0.05",
            "--max-tokens",
            "20",
            "--min-tokens",
            "2",
            "--n",
            "3",
            "--sampling-seed",
            "11",
            "--stop",
            "###",
            "--stop",
            "\n",
            "--stop-token-ids",
            "2,3",
            "--stop-token-ids",
            "9",
            "--presence-penalty",
            "0.1",
            "--frequency-penalty",
            "0.2",
            "--repetition-penalty",
            "1.1",
            "--ignore-eos",
            "--logprobs",
            "4",
            "--prompt-logprobs",
            "1",
            "--no-progress",
            "--chat",
            "-o",
            "out.jsonl",
            "--prompts-file",
            "p.txt",
        ]
    )
    assert opts.engine_kwargs == dict(
        model="m.gguf",
        dtype="bfloat16",
        max_model_len=512,
        max_num_seqs=8,
        max_num_batched_tokens=256,
        block_size=32,
        gpu_memory_utilization=0.5,
        num_gpu_blocks_override=100,
        enable_prefix_caching=False,
        tensor_parallel_size=2,
        seed=7,
        max_logprobs=5,
        attention_backend="pallas",
    )
    assert opts.sampling_kwargs == dict(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        max_tokens=20,
        min_tokens=2,
        n=3,
        seed=11,
        stop=["###", "\n"],
        stop_token_ids=[2, 3, 9],
        presence_penalty=0.1,
        frequency_penalty=0.2,
        repetition_penalty=1.1,
        ignore_eos=True,
        logprobs=4,
        prompt_logprobs=1,
    )
    assert (opts.prompts, opts.prompts_file, opts.output, opts.chat, opts.progress) == (
        ["hi"],
        "p.txt",
        "out.jsonl",
        True,
        False,
    )
    sp = SamplingParams(**opts.sampling_kwargs)  # the real class accepts every keyword
    assert (sp.seed, sp.stop, sp.stop_token_ids, sp.n) == (11, ["###", "\n"], [2, 3, 9], 3)


def test_unset_flags_are_left_to_the_library_defaults():
    opts = resolve(["hi"])
    assert opts.engine_kwargs == {"model": "smollm2-135m"}
    assert opts.sampling_kwargs == {}
    assert (opts.output, opts.chat, opts.progress) == (None, False, True)
    assert resolve(["hi", "--enable-prefix-caching"]).engine_kwargs["enable_prefix_caching"] is True


def test_argparse_rejects_bad_values(capsys):
    assert cli.main(["generate", "hi", "--max-tokens", "many"]) == 2
    assert "--max-tokens: invalid int value" in capsys.readouterr().err
    assert cli.main(["generate", "hi", "--stop-token-ids", "2,x"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- YAML config


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_yaml_config_merge_and_command_line_override(tmp_path):
    cfg = write(
        tmp_path,
        "c.yaml",
        """
model: tiny-model
max-model-len: 1024          # dash form
max_num_seqs: 4              # underscore form
tp: 1
enable-prefix-caching: false
num_gpu_blocks: "64"         # strings are converted like flag text
temperature: 0
max_tokens: 12
stop: ["\\n\\n", "END"]
stop-token-ids: [5, "6,7"]
ignore_eos: true
no-progress: true
sampling_seed: null          # null leaves the default
""",
    )
    opts = resolve(["hi", "--config", cfg, "--max-model-len", "2048", "--stop", "X"])
    assert opts.engine_kwargs == dict(
        model="tiny-model",
        max_model_len=2048,
        max_num_seqs=4,
        tensor_parallel_size=1,
        enable_prefix_caching=False,
        num_gpu_blocks_override=64,
    )
    assert opts.sampling_kwargs == dict(
        temperature=0.0, max_tokens=12, stop=["X"], stop_token_ids=[5, 6, 7], ignore_eos=True
    )
    assert opts.progress is False
    # Without the overriding flags the file's values stand.
    opts = resolve(["hi", "--config", cfg])
    assert opts.engine_kwargs["max_model_len"] == 1024
    assert opts.sampling_kwargs["stop"] == ["\n\n", "END"]


def test_yaml_config_unknown_keys_are_named(tmp_path, capsys):
    typo = "temprature"  # codespell:ignore -- the misspelled key is the point of this test
    cfg = write(tmp_path, "c.yaml", f"max_model_len: 8\nmax_len: 9\n{typo}: 0.5\n")
    with pytest.raises(CLIError, match=rf"unknown key\(s\) in config file .*: max_len, {typo}"):
        load_config_file(cfg, generate_parser())
    assert cli.main(["generate", "hi", "--config", cfg], llm_factory=FakeLLM) == 2
    err = capsys.readouterr().err
    assert f"max_len, {typo}" in err and "Traceback" not in err
    assert not FakeLLM.instances


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_model_len: lots\n", "key 'max_model_len': invalid value 'lots'"),
        ("ignore_eos: yes please\n", "key 'ignore_eos' must be true or false"),
        ("temperature: [1, 2]\n", "key 'temperature' has a bad value"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("max_model_len: [unclosed\n", "not valid YAML"),
        ("seed: 1\nseed: 2\n", "not valid YAML.*duplicate key 'seed'"),
        ("max-model-len: 1\nmax_model_len: 2\n", "sets 'max_model_len' twice"),
    ],
)
def test_yaml_config_bad_values(tmp_path, text, message):
    cfg = write(tmp_path, "c.yaml", text)
    with pytest.raises(CLIError, match=message.replace("[", r"\[")):
        load_config_file(cfg, generate_parser())


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["generate", "hi", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------- speculative config

NGRAM = {"method": "ngram", "num_speculative_tokens": 3}


def test_speculative_config_flag_and_yaml_reach_llm(tmp_path):
    """The flag's JSON, a YAML mapping and a YAML string of JSON all become the dict that
    `LLM(speculative_config=...)` takes; the flag wins over the file."""
    from jaxllm.spec_decode import SpeculativeConfig

    opts = resolve(["hi", "--speculative-config", json.dumps(NGRAM)])
    spec = opts.engine_kwargs["speculative_config"]
    assert spec == NGRAM
    assert SpeculativeConfig.from_value(spec).ngram_window == (1, 5)  # the real class takes it
    mapping = write(
        tmp_path,
        "m.yaml",
        "speculative_config:\n  method: ngram\n  num_speculative_tokens: 2\n"
        "  prompt_lookup_max: 3\n",
    )
    assert resolve(["hi", "--config", mapping]).engine_kwargs["speculative_config"] == {
        "method": "ngram",
        "num_speculative_tokens": 2,
        "prompt_lookup_max": 3,
    }
    text = write(tmp_path, "t.yaml", f"speculative-config: '{json.dumps(NGRAM)}'\n")
    assert resolve(["hi", "--config", text]).engine_kwargs["speculative_config"] == NGRAM
    flag_wins = ["hi", "--config", mapping, "--speculative-config", json.dumps(NGRAM)]
    assert resolve(flag_wins).engine_kwargs["speculative_config"] == NGRAM


@pytest.mark.parametrize(
    "value, message",
    [
        ("{method: ngram", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('{"method": "ngram"}', "needs 'num_speculative_tokens'"),
        ('{"method": "ngram", "num_speculative_tokens": 2, "k": 1}', "unknown keys ['k']"),
        ('{"method": "eagle3", "num_speculative_tokens": 2}', "'eagle3' is not supported"),
        ('{"method": "ngram", "num_speculative_tokens": 0}', "must be an int >= 1"),
    ],
)
def test_bad_speculative_config_names_the_flag(capsys, value, message):
    rc, stdout, err = run_cli(["generate", "hi", "--speculative-config", value], capsys)
    assert rc == 2 and stdout == "" and not FakeLLM.instances
    assert "argument --speculative-config: " in err and message in err


@pytest.mark.parametrize(
    "text, message",
    [
        ("speculative_config: {method: ngram}\n", "key 'speculative_config': .*needs"),
        ("speculative_config: '{oops'\n", "key 'speculative_config': invalid value .*JSON"),
        ("speculative_config: {method: ngram, num_speculative_tokens: 2, x: 1}\n", "'x'"),
    ],
)
def test_bad_speculative_config_in_yaml_names_the_key(tmp_path, text, message):
    cfg = write(tmp_path, "c.yaml", text)
    with pytest.raises(CLIError, match=message):
        load_config_file(cfg, generate_parser())


def test_speculative_config_refuses_async_scheduling(capsys):
    argv = ["generate", "hi", "--speculative-config", json.dumps(NGRAM), "--async-scheduling"]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2 and not FakeLLM.instances
    assert "--speculative-config does not combine with --async-scheduling" in err
    argv[-1] = "--no-async-scheduling"  # synchronous, as speculation runs anyway
    assert resolve(argv[1:]).engine_kwargs["async_scheduling"] is False


# --------------------------------------------------------------------------------- prompt inputs


def test_prompt_file_formats_and_jsonl_output(tmp_path, capsys):
    txt = write(tmp_path, "p.txt", "first prompt\n\n  second, with spaces \nthird 🦊\n")
    jsonl = write(
        tmp_path,
        "p.jsonl",
        "\n".join(
            [
                json.dumps({"prompt": "from jsonl"}),
                "",
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "be brief"},
                            {"role": "user", "content": "hello"},
                        ]
                    }
                ),
                json.dumps({"prompt": "last"}),
            ]
        )
        + "\n",
    )
    out = tmp_path / "out.jsonl"
    rc, stdout, err = run_cli(
        [
            "generate",
            "cli arg",
            "--prompts-file",
            txt,
            "--output",
            str(out),
            "--max-tokens",
            "30",
            "--temperature",
            "0",
            "--max-model-len",
            "64",
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 0 and stdout == "" and err == ""
    (llm,) = FakeLLM.instances
    assert llm.engine_kwargs == {"model": "smollm2-135m", "max_model_len": 64}
    ((kind, prompts, sp, use_tqdm),) = llm.calls
    assert kind == "generate" and use_tqdm is False
    assert prompts == ["cli arg", "first prompt", "  second, with spaces ", "third 🦊"]
    assert isinstance(sp, SamplingParams) and (sp.max_tokens, sp.temperature) == (30, 0.0)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    for rec, prompt in zip(records, prompts):
        expect = fake_completion(prompt, sp, 0)
        assert rec["prompt"] == prompt and rec["num_prompt_tokens"] == len(prompt)
        assert rec["outputs"] == [
            {
                "index": 0,
                "text": expect,
                "token_ids": [ord(c) for c in expect],
                "finish_reason": "length",
                "stop_reason": None,
            }
        ]
        assert "prompt_logprobs" not in rec

    # .jsonl: plain prompts go through generate, conversations through chat; order is kept.
    rc, stdout, err = run_cli(
        ["generate", "--prompts-file", jsonl, "--max-tokens", "40", "--json"], capsys
    )
    assert rc == 0
    llm = FakeLLM.instances[-1]
    assert [c[0] for c in llm.calls] == ["generate", "chat"]
    assert llm.calls[0][1] == ["from jsonl", "last"] and llm.calls[0][3] is True
    assert llm.calls[1][1] == [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    ]
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["prompt"] for r in records] == ["from jsonl", "system:be brief|user:hello", "last"]
    assert records[1]["messages"][1] == {"role": "user", "content": "hello"}
    assert records[1]["outputs"][0]["text"] == fake_completion(
        "system:be brief|user:hello", llm.calls[1][2], 0
    )


def test_chat_flag_sends_plain_prompts_as_user_messages(capsys):
    rc, stdout, _ = run_cli(
        ["generate", "what is 2+2?", "--chat", "--n", "2", "--temperature", "1", "--json"],
        capsys,
    )
    assert rc == 0
    ((kind, convs, sp, _),) = FakeLLM.instances[0].calls
    assert kind == "chat" and convs == [[{"role": "user", "content": "what is 2+2?"}]]
    (rec,) = [json.loads(line) for line in stdout.splitlines()]
    assert rec["messages"] == convs[0] and rec["prompt"] == "user:what is 2+2?"
    assert [o["index"] for o in rec["outputs"]] == [0, 1]
    assert [o["text"] for o in rec["outputs"]] == [
        fake_completion("user:what is 2+2?", sp, i) for i in (0, 1)
    ]


def test_logprobs_are_written_when_asked(capsys):
    rc, stdout, _ = run_cli(
        [
            "generate",
            "abc",
            "--logprobs",
            "1",
            "--prompt-logprobs",
            "0",
            "--max-tokens",
            "3",
            "--json",
        ],
        capsys,
    )
    assert rc == 0
    (rec,) = [json.loads(line) for line in stdout.splitlines()]
    (out,) = rec["outputs"]
    assert out["text"] == "cba" and out["cumulative_logprob"] == -1.5
    assert out["logprobs"] == [
        [
            {"token_id": ord(c), "logprob": -0.5, "rank": 1, "token": c},
            {"token_id": 0, "logprob": None, "rank": 2, "token": None},
        ]  # -inf is written as null
        for c in "cba"
    ]
    assert rec["prompt_logprobs"] == [None] + [
        [{"token_id": ord(c), "logprob": -1.0, "rank": 3, "token": c}] for c in "bc"
    ]


def test_generated_text_is_printed_without_json(capsys):
    """Without --json or --output: each completion's text, in input order, a blank line apart."""
    rc, stdout, _ = run_cli(["generate", "abc", "hello", "--n", "2", "--temperature", "1"], capsys)
    assert rc == 0
    ((_, _, sp, _),) = FakeLLM.instances[0].calls
    texts = [fake_completion(p, sp, i) for p in ("abc", "hello") for i in (0, 1)]
    assert stdout == "\n".join(t + "\n" for t in texts)
    rc, stdout, _ = run_cli(["generate", "abc"], capsys)
    assert rc == 0 and stdout == fake_completion("abc", SamplingParams(), 0) + "\n"


class FakeLLMWithGenerationConfig(FakeLLM):
    """A model whose generation_config recommends sampling settings (default_sampling_kwargs)."""

    default_sampling_kwargs = {"temperature": 0.3, "top_p": 0.5, "max_tokens": 7}


def test_sampling_defaults_come_from_the_generation_config(capsys):
    """`--generation-config auto` (the default): the model's settings, overridden by flags."""
    rc, _, _ = run_cli_with(FakeLLMWithGenerationConfig, ["generate", "hi"], capsys)
    sp = FakeLLM.instances[-1].calls[0][2]
    assert rc == 0 and (sp.temperature, sp.top_p, sp.max_tokens) == (0.3, 0.5, 7)
    rc, _, _ = run_cli_with(
        FakeLLMWithGenerationConfig, ["generate", "hi", "--max-tokens", "3", "--top-p", "1"], capsys
    )
    sp = FakeLLM.instances[-1].calls[0][2]
    assert rc == 0 and (sp.temperature, sp.top_p, sp.max_tokens) == (0.3, 1.0, 3)
    assert resolve(["hi", "--generation-config", "vllm"]).engine_kwargs["generation_config"] == (
        "vllm"
    )


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["generate", "hi", "--max-token", "5"], "usage: jaxllm generate"),  # no abbreviations
        (["generate", "hi", "--temp", "0"], "usage: jaxllm generate"),
        (["serve", "--max-model", "64"], "usage: jaxllm serve"),
        (["bench", "latency", "--no-such-flag"], "usage: jaxllm bench latency"),
        (["sweep", "f.yaml", "--outt", "x"], "usage: jaxllm sweep"),
    ],
)
def test_unknown_or_abbreviated_flags_print_the_subcommands_usage(capsys, argv, usage):
    rc, stdout, err = run_cli(argv, capsys)
    assert rc == 2 and stdout == "" and not FakeLLM.instances
    assert err.startswith(usage) and "error: unrecognized arguments: " in err


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "ok"}', '{"prompt": "fine"}', '{"prompt": "broken'], ":3: not valid JSON"),
        (['{"prompt": "ok"}', '["a list"]'], ':2: expected an object with "prompt" or "messages"'),
        (['{"prompt": "ok", "temperature": 1}'], ":1: unknown key(s) temperature"),
        (['{"prompt": "a", "messages": []}'], ':1: give exactly one of "prompt" and "messages"'),
        (["", '{"prompt": ""}'], ':2: "prompt" must be a non-empty string'),
        (
            ['{"messages": [{"role": "user"}]}'],
            ":1: each message needs a string 'role' and 'content'",
        ),
        (['{"messages": []}'], ":1: 'messages' must be a non-empty list"),
    ],
)
def test_malformed_jsonl_names_the_line(tmp_path, capsys, lines, message):
    path = write(tmp_path, "bad.jsonl", "\n".join(lines) + "\n")
    rc, stdout, err = run_cli(["generate", "--prompts-file", path], capsys)
    assert rc == 2 and stdout == ""
    assert err.startswith("jaxllm generate: error: ") and f"bad.jsonl{message}" in err
    assert "Traceback" not in err and not FakeLLM.instances


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate"], "no prompts: give PROMPT arguments or --prompts-file"),
        (["generate", "--prompts-file", "{tmp}/missing.txt"], "prompts file not found"),
        (["generate", "--prompts-file", "{tmp}/empty.txt"], "no prompts"),
        (["generate", ""], "prompt 0 is empty"),
        (["generate", "hi", "-o", "{tmp}/no/such/dir/out.jsonl"], "output folder does not exist"),
        (
            ["generate", "hi", "--temperature", "-1"],
            "bad sampling option: temperature must be non-negative",
        ),
    ],
)
def test_bad_input_exits_2_without_traceback(tmp_path, capsys, argv, message):
    write(tmp_path, "empty.txt", "\n\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc, stdout, err = run_cli(argv, capsys)
    assert rc == 2 and stdout == ""
    assert message in err and "Traceback" not in err
    assert not FakeLLM.instances  # nothing was loaded


def test_engine_errors_are_reported_cleanly(capsys):
    def failing_factory(**kwargs):
        raise ValueError(f"max_model_len ({kwargs['max_model_len']}) is too long")

    rc = cli.main(["generate", "hi", "--max-model-len", "99999"], llm_factory=failing_factory)
    err = capsys.readouterr().err
    assert rc == 2 and "cannot start the engine: max_model_len (99999) is too long" in err


# -------------------------------------------------------------------------------- convert, -m, help


def test_convert_calls_convert_main(monkeypatch):
    calls = []
    fake = types.ModuleType("jaxllm.entrypoints.convert")
    fake.convert_main = lambda model, out_dir, dtype, revision: calls.append(
        (model, out_dir, dtype, revision)
    )
    monkeypatch.setitem(sys.modules, "jaxllm.entrypoints.convert", fake)
    assert cli.main(["convert", "smollm2-135m", "/tmp/out", "--dtype", "bfloat16"]) == 0
    assert cli.main(["convert", "a.gguf", "dir"]) == 0
    assert cli.main(["convert", "org/name", "dir", "--revision", "v1"]) == 0
    assert calls == [
        ("smollm2-135m", "/tmp/out", "bfloat16", None),
        ("a.gguf", "dir", "auto", None),
        ("org/name", "dir", "auto", "v1"),
    ]


def test_help_and_missing_command(capsys):
    assert cli.main(["generate", "--help"]) == 0
    assert "--sampling-seed" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert "generate" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    bad = write(tmp_path, "bad.jsonl", '{"prompt": "x"}\nnot json\n')
    proc = subprocess.run(
        [sys.executable, "-m", "jaxllm", "generate", "--prompts-file", bad],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=kill_with_parent,
    )
    assert proc.returncode == 2
    assert "bad.jsonl:2: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
