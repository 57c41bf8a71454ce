"""`jaxllm generate` end to end on SmolLM2: JSONL in, JSONL out, greedy text equals LLM.generate;
the README's first command prints a right answer."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from jaxllm import LLM, SamplingParams
from jaxllm.entrypoints.cli import main


def test_generate_jsonl_in_and_out_equals_llm_generate(smollm2, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "The capital of France is"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Say hi."}]})
        + "\n"
    )
    config = tmp_path / "engine.yaml"
    config.write_text("max_model_len: 256\nmax_num_seqs: 4\nmax_tokens: 99\n")
    out = tmp_path / "out.jsonl"
    engine = dict(max_model_len=256, max_num_seqs=4)

    def factory(**kwargs):  # the CLI's own kwargs, on the already loaded model
        assert kwargs.pop("model") == "smollm2-135m"
        assert kwargs == engine
        return LLM(smollm2, **kwargs)

    rc = main(
        [
            "generate",
            "--prompts-file",
            str(prompts),
            "--output",
            str(out),
            "--config",
            str(config),
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--no-progress",
        ],
        llm_factory=factory,
    )
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    llm = LLM(smollm2, **engine)
    sp = SamplingParams(temperature=0.0, max_tokens=12)
    want_plain = llm.generate("The capital of France is", sp, use_tqdm=False)[0].outputs[0]
    want_chat = llm.chat([{"role": "user", "content": "Say hi."}], sp, use_tqdm=False)[0].outputs[0]
    assert rows[0]["outputs"][0]["token_ids"] == want_plain.token_ids
    assert rows[0]["outputs"][0]["text"] == want_plain.text
    assert rows[1]["outputs"][0]["token_ids"] == want_chat.token_ids
    assert len(rows[0]["outputs"][0]["token_ids"]) <= 12  # the flag overrides the file's 99


def test_generate_bad_prompts_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json\n')
    assert main(["generate", "--prompts-file", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def _readme_first_command() -> list[str]:
    """The `jaxllm generate` arguments of the README's first command (after `setup.sh &&`)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    line = next(ln for ln in readme.splitlines() if ln.startswith("bash scripts/setup.sh && "))
    argv = shlex.split(line.split("&&", 1)[1])
    assert argv[:2] == [".venv/bin/jaxllm", "generate"], argv
    return argv[1:]


def test_the_readme_first_command_prints_a_good_answer(smollm2, capsys):
    """What a new user sees first: the generated text only (no JSON), and a right answer."""
    argv = _readme_first_command()
    assert "--json" not in argv and "--output" not in argv

    def factory(**kwargs):
        assert kwargs.pop("model") == "smollm2-135m"
        return LLM(smollm2, **kwargs, max_model_len=512, num_gpu_blocks_override=64)

    assert main([*argv, "--no-progress"], llm_factory=factory) == 0
    answers = capsys.readouterr().out.split("\n\n")
    assert answers[0] == "The capital of France is Paris."
    assert len(answers) == 2 and "1." in answers[1] and len(answers[1]) > 100
