"""Model-free parts of the server: `jaxllm serve` options (flags, YAML config, errors), merging of
delta outputs, OpenAI error mapping of FastAPI validation errors, the speculative decoding
metrics (exported only with speculation; summed over data-parallel replicas), and the statistics
of `jaxllm.benchmarks.serving`.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

pytest.importorskip("fastapi")

from jaxllm.benchmarks import serving as bench_serving  # noqa: E402
from jaxllm.engine.async_engine import EngineStats, merge_delta_outputs  # noqa: E402
from jaxllm.entrypoints import cli  # noqa: E402
from jaxllm.entrypoints.cli_args import CLIError, build_parser  # noqa: E402
from jaxllm.entrypoints.openai.errors import param_from_message  # noqa: E402
from jaxllm.entrypoints.openai.metrics import ServerMetrics  # noqa: E402
from jaxllm.entrypoints.openai.serve_args import (  # noqa: E402
    add_serve_subcommand,
    resolve_serve_args,
)
from jaxllm.outputs import CompletionOutput, Logprob, RequestOutput  # noqa: E402


def serve(argv):
    parser = build_parser()
    add_serve_subcommand(parser)
    return resolve_serve_args(parser.parse_args(["serve", *argv]))


# ------------------------------------------------------------------------------------ serve options


def test_serve_defaults_and_flags(monkeypatch):
    monkeypatch.delenv("JAXLLM_API_KEY", raising=False)
    opts = serve([])
    assert (opts.host, opts.port, opts.api_key, opts.max_waiting_requests) == (
        "127.0.0.1",
        8000,
        None,
        1024,
    )
    assert opts.served_model_names == ["smollm2-135m"] and opts.engine_kwargs == {
        "model": "smollm2-135m"
    }
    assert (opts.max_request_body_bytes, opts.trust_request_chat_template) == (2 << 20, False)
    opts = serve(
        [
            "some/model",
            "--port",
            "0",
            "--api-key",
            "k",
            "--served-model-name",
            "a",
            "b",
            "--max-num-seqs",
            "4",
            "--num-gpu-blocks",
            "9",
            "--no-enable-prefix-caching",
            "--max-waiting-requests",
            "-1",
            "--retry-after",
            "3",
            "--no-access-log",
            "--max-request-body-bytes",
            "-1",
            "--trust-request-chat-template",
        ]
    )
    assert opts.engine_kwargs == {
        "model": "some/model",
        "max_num_seqs": 4,
        "num_gpu_blocks_override": 9,
        "enable_prefix_caching": False,
    }
    assert (opts.port, opts.api_key, opts.served_model_names) == (0, "k", ["a", "b"])
    assert (opts.max_waiting_requests, opts.retry_after, opts.access_log) == (None, 3, False)
    assert (opts.max_request_body_bytes, opts.trust_request_chat_template) == (None, True)
    assert serve(["--max-request-body-bytes", "1000"]).max_request_body_bytes == 1000
    assert serve(["--model", "other"]).engine_kwargs["model"] == "other"


def test_serve_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("JAXLLM_API_KEY", "from-env")
    assert serve([]).api_key == "from-env"
    assert serve(["--api-key", "flag"]).api_key == "flag"


def test_serve_config_file_merges_under_flags(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        "model: cfg-model\nport: 9001\nmax-model-len: 256\nserved_model_name: [x, y]\n"
        "api-key: secret\nmax_waiting_requests: 5\n"
    )
    opts = serve(["--config", str(cfg), "--port", "9002"])
    assert opts.port == 9002  # the flag wins
    assert opts.engine_kwargs == {"model": "cfg-model", "max_model_len": 256}
    assert opts.served_model_names == ["x", "y"]
    assert (opts.api_key, opts.max_waiting_requests) == ("secret", 5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("prot: 1\n")
    with pytest.raises(CLIError, match="unknown key.*prot"):
        serve(["--config", str(bad)])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "70000"], "--port"),
        (["--max-waiting-requests", "-5"], "--max-waiting-requests"),
        (["--retry-after", "0"], "--retry-after"),
        (["--max-request-body-bytes", "0"], "--max-request-body-bytes"),
    ],
)
def test_serve_bad_options(argv, message):
    with pytest.raises(CLIError, match=message):
        serve(argv)


def test_serve_speculative_config_flag_and_yaml(tmp_path):
    spec = {"method": "ngram", "num_speculative_tokens": 3}
    opts = serve(["--speculative-config", '{"method":"ngram","num_speculative_tokens":3}'])
    assert opts.engine_kwargs["speculative_config"] == spec
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("speculative_config: {method: ngram, num_speculative_tokens: 3}\n")
    assert serve(["--config", str(cfg)]).engine_kwargs["speculative_config"] == spec
    with pytest.raises(CLIError, match="--speculative-config does not combine"):
        serve(["--config", str(cfg), "--async-scheduling"])


def test_cli_serve_bad_speculative_config_exits_2(capsys):
    medusa = '{"method": "medusa", "num_speculative_tokens": 2}'
    assert cli.main(["serve", "--speculative-config", medusa]) == 2  # before any model loads
    err = capsys.readouterr().err
    assert "argument --speculative-config: " in err and "'medusa' is not supported" in err


def test_cli_serve_help_and_errors_exit_codes(capsys, tmp_path):
    assert cli.main(["serve", "--help"]) == 0
    assert "--api-key" in capsys.readouterr().out
    assert cli.main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert cli.main(["serve", "--port", "-1"]) == 2  # rejected before any model is loaded


# -------------------------------------------------------------------------------------- deltas


def _out(texts, ids, finished, reasons=(None, None), lps=None):
    outs = [
        CompletionOutput(
            index=i,
            text=t,
            token_ids=list(tok),
            cumulative_logprob=None,
            logprobs=None if lps is None else lps[i],
            finish_reason=reasons[i],
        )
        for i, (t, tok) in enumerate(zip(texts, ids))
    ]
    return RequestOutput("r", "p", [1, 2], None, outs, finished)


def test_merge_delta_outputs_concatenates_each_sequence():
    lp = lambda t: {t: Logprob(-0.5, 1, str(t))}  # noqa: E731
    a = _out(["Hel", "A"], [[5], [7]], False, lps=[[lp(5)], [lp(7)]])
    b = _out(["lo", ""], [[6], []], False, lps=[[lp(6)], []])
    c = _out(["!", "B"], [[9], [8]], True, reasons=("stop", "length"), lps=[[lp(9)], [lp(8)]])
    m = merge_delta_outputs(merge_delta_outputs(a, b), c)
    assert [o.text for o in m.outputs] == ["Hello!", "AB"]
    assert [o.token_ids for o in m.outputs] == [[5, 6, 9], [7, 8]]
    assert [[list(e) for e in o.logprobs] for o in m.outputs] == [[[5], [6], [9]], [[7], [8]]]
    assert [o.finish_reason for o in m.outputs] == ["stop", "length"] and m.finished


def test_param_from_message_names_only_known_fields():
    assert param_from_message("top_p must be in (0, 1], got 2.", ["top_p", "n"]) == "top_p"
    assert param_from_message("n must be 1 when using greedy sampling", ["top_p", "n"]) == "n"
    assert param_from_message("token id 5 is outside", ["top_p", "n"]) is None


# ------------------------------------------------------------------------------ metrics

SPEC_NAMES = (
    "vllm:spec_decode_num_drafts_total",
    "vllm:spec_decode_num_draft_tokens_total",
    "vllm:spec_decode_num_accepted_tokens_total",
    "vllm:spec_decode_num_accepted_tokens_per_pos_total",
)


def _exposition(num_speculative_tokens, stats) -> dict[str, float]:
    text = ServerMetrics("m", lambda: stats, num_speculative_tokens).render().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_spec_decode_metrics_only_with_speculation():
    stats = EngineStats(
        spec_num_drafts=5,
        spec_num_draft_tokens=12,
        spec_num_accepted_tokens=7,
        spec_accepted_per_position=(4, 3),
    )
    off = _exposition(None, stats)
    assert not [k for k in off if k.startswith("vllm:spec_decode")]
    on = _exposition(3, stats)
    assert on['vllm:spec_decode_num_drafts_total{model_name="m"}'] == 5
    assert on['vllm:spec_decode_num_draft_tokens_total{model_name="m"}'] == 12
    assert on['vllm:spec_decode_num_accepted_tokens_total{model_name="m"}'] == 7
    per_pos = [
        on[f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{model_name="m",position="{j}"}}']
        for j in range(3)
    ]
    assert per_pos == [4, 3, 0]  # every position up to k, counted or not
    assert {k.split("{")[0] for k in on if k.startswith("vllm:spec")} == set(SPEC_NAMES)


def test_data_parallel_spec_stats_are_summed():
    """`DPEngine.spec_stats` (what the server's /metrics reads) sums its replicas' counters."""
    from jaxllm.engine.dp_engine import DPEngine
    from jaxllm.spec_decode import SpecDecodeStats

    a, b = SpecDecodeStats(), SpecDecodeStats()
    a.observe(3, 2)
    b.observe(3, 3)
    b.observe(2, 0)
    dp = DPEngine.__new__(DPEngine)  # no engines built: replicas that only hold counters
    dp.replicas = [types.SimpleNamespace(spec_stats=a), types.SimpleNamespace(spec_stats=b)]
    total = dp.spec_stats
    assert (total.num_drafts, total.num_draft_tokens, total.num_accepted_tokens) == (3, 8, 5)
    assert total.accepted_per_position == [2, 2, 1]
    assert a.accepted_per_position == [1, 1, 0]  # the replicas' own counters are untouched


# ---------------------------------------------------------------------------------------- bench


def test_bench_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        xs = rng.exponential(size=n).tolist()
        for q in (50, 90, 99):
            assert bench_serving.percentile(xs, q) == pytest.approx(np.percentile(xs, q))
    s = bench_serving.summarize([0.1, 0.2, 0.3])
    assert s["mean_ms"] == pytest.approx(200.0) and s["p50_ms"] == pytest.approx(200.0)


def test_bench_workload_is_seeded_and_in_range():
    cfg = bench_serving.BenchConfig(
        num_prompts=50, input_len=(4, 9), output_len=(2, 3), vocab_range=(10, 20), seed=1
    )
    work = bench_serving.make_workload(cfg)
    assert work == bench_serving.make_workload(cfg)
    assert all(4 <= len(p) <= 9 and 2 <= mt <= 3 and all(10 <= t < 20 for t in p) for p, mt in work)
    assert len({len(p) for p, _ in work}) > 1


@pytest.mark.parametrize("spec", ["0", "5:2", "a:b", "1:2:3"])
def test_bench_bad_ranges(spec):
    with pytest.raises(ValueError, match="--input-len"):
        bench_serving.parse_range(spec, "--input-len")
