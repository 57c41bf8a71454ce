"""`jaxllm bench throughput|latency` (in process, through the CLI's `main`) on a tiny random Llama
saved as an HF folder, with the HF transformers peer on the same folder: the record's ratios are
jaxllm's rates over HF's, and its workload and engine settings are the ones asked for."""

from __future__ import annotations

import json

import pytest

from jaxllm.entrypoints.cli import main as cli_main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    folder = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    return str(folder)


def test_bench_throughput_with_hf_peer(tiny_folder, tmp_path, capsys):
    out = tmp_path / "tp.json"
    rc = cli_main(
        [
            "bench",
            "throughput",
            "--model",
            tiny_folder,
            "--num-prompts",
            "3",
            "--lengths",
            "4:6",
            "--output-len",
            "3",
            "--max-num-seqs",
            "4",
            "--max-num-batched-tokens",
            "16",
            "--num-gpu-blocks",
            "6",
            "--no-prefix-caching",
            "--peer",
            "hf",
            "--hf-threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    rec = json.loads(out.read_text())
    w = rec["workload"]
    assert w["num_requests"] == 3 and w["output_tokens"] == 9
    assert 4 <= w["input_len_min"] <= w["input_len_max"] <= 6
    assert f"| jaxllm | 3 | {w['input_tokens']} | 9 |" in stdout
    assert "HF transformers (cpu, 1 threads, batch 3)" in stdout
    assert "jaxllm / HF output tokens/s" in stdout

    assert rec["benchmark"] == "throughput" and rec["peer"] == "hf"
    e = rec["engine"]
    assert (e["max_num_seqs"], e["num_blocks"], e["enable_prefix_caching"]) == (4, 6, False)
    assert e["max_num_batched_tokens"] == 16
    assert e["max_model_len"] == w["input_len_max"] + 3  # the workload's longest prompt + output
    assert rec["results"]["jaxllm"]["compilations_warmup"] is None  # no --warmup
    j, h = rec["results"]["jaxllm"], rec["results"]["hf"]
    assert h["output_tokens_per_s"] == pytest.approx(9 / h["elapsed_s"])
    for key in ("requests_per_s", "output_tokens_per_s", "total_tokens_per_s"):
        assert rec["vs_peer"][key] == pytest.approx(j[key] / h[key])
    assert rec["ratio_output_tokens_per_s"] == rec["vs_peer"]["output_tokens_per_s"]
    assert rec["settings"]["model"] == tiny_folder and rec["settings"]["peer"] == "hf"
    assert rec["machine"]["cpu_model"] and rec["machine"]["cpus_usable"] >= 1
    assert rec["device"]["device_kind"] == "cpu"
    assert rec["packages"]["jax"] and rec["packages"]["torch"] and rec["packages"]["jaxllm"]


def test_bench_latency_batch_with_hf_peer(tiny_folder, tmp_path, capsys):
    out = tmp_path / "lat.json"
    rc = cli_main(
        [
            "bench",
            "latency",
            "--model",
            tiny_folder,
            "--input-len",
            "5",
            "--output-len",
            "4",
            "--batch-size",
            "2",
            "--num-iters",
            "2",
            "--num-gpu-blocks",
            "6",
            "--peer",
            "hf",
            "--hf-threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    assert "## Latency:" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    j, h = rec["results"]["jaxllm"], rec["results"]["hf"]
    assert rec["engine"]["max_num_seqs"] == 2  # defaults to the batch size
    # both prompts prefill in one step; then 3 decode steps (2 tokens each) per run, 2 runs
    assert j["prefill_steps"] == 1
    assert j["decode_ms_per_token"]["count"] == 2 * 3 and h["decode_ms_per_token"]["count"] == 2 * 3
    assert j["ttft_ms"]["count"] == 2 and h["ttft_ms"]["count"] == 2
    assert rec["vs_peer"]["decode_ms_per_token"] == pytest.approx(
        h["decode_ms_per_token"]["mean_ms"] / j["decode_ms_per_token"]["mean_ms"]
    )
    assert rec["vs_peer"]["ttft_ms"] == pytest.approx(
        h["ttft_ms"]["mean_ms"] / j["ttft_ms"]["mean_ms"]
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["throughput", "--num-prompts", "0"], "--num-prompts must be >= 1"),
        (["throughput", "--lengths", "9:3"], "need 1 <= LO <= HI"),
        (["latency", "--output-len", "1"], "--output-len must be >= 2"),
        (["serve", "--request-rate", "0"], "--request-rate must be > 0"),
        (["throughput", "--dataset", "/nonexistent/x.jsonl"], "dataset file not found"),
        (
            ["latency", "--speculative-config", '{"method":"ngram","num_speculative_tokens":2}'],
            "jaxllm.benchmarks.spec_decode",
        ),
    ],
)
def test_bench_bad_flags_exit_2(argv, message, capsys):
    assert cli_main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxllm bench: error:") and message in err


def test_peer_out_of_memory_is_recognised():
    from jaxllm.benchmarks.hf_peer import is_out_of_memory

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(ValueError("dtype 'int8' is not supported by the HF peer"))
