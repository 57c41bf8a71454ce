"""Tensor and data parallelism on 8 virtual CPU devices.

The work runs once, in a subprocess (tp_worker.py), because XLA_FLAGS must set the device count
before jax is imported and this pytest process has imported jax already; the tests assert on what
it observed. References: greedy tokens of tp=1 on the same weights, and the full (unsharded)
arrays each device's shard must equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from worker_process import run_worker

from jaxllm.process_lifetime import kill_with_parent

WORKER = os.path.join(os.path.dirname(__file__), "tp_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What the rules table says, written out by hand: (tp-way) parameter path -> PartitionSpec.
EXPECTED_SPECS = {
    "embed_tokens/embedding": "P('model',)",  # vocabulary split
    "layers/input_layernorm/scale": "P()",
    "layers/self_attn/q_proj/kernel": "P(None, None, 'model')",  # heads (columns) split
    "layers/self_attn/k_proj/kernel": "P(None, None, 'model')",
    "layers/self_attn/v_proj/kernel": "P(None, None, 'model')",
    "layers/self_attn/o_proj/kernel": "P(None, 'model')",  # heads (rows) split
    "layers/post_attention_layernorm/scale": "P()",
    "layers/mlp/gate_proj/kernel": "P(None, None, 'model')",
    "layers/mlp/up_proj/kernel": "P(None, None, 'model')",
    "layers/mlp/down_proj/kernel": "P(None, 'model')",
    "norm/scale": "P()",
    "lm_head/kernel": "P(None, 'model')",
}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """Folder of the random Llama (written by the worker; reused by the multi-host test)."""
    return tmp_path_factory.mktemp("llama") / "llama"


@pytest.fixture(scope="module")
def observed(tmp_path_factory, smollm2_path, llama_dir):
    out = tmp_path_factory.mktemp("tp") / "observed.json"
    run_worker(
        WORKER,
        [str(out), "llama", "formats", "smollm2", "embedding"],
        env={"TP_WORKER_LLAMA_DIR": str(llama_dir)},
    )
    return json.loads(out.read_text())


def test_worker_saw_eight_devices(observed):
    assert observed["num_devices"] == 8


def test_llama_greedy_tokens_equal_across_tp_and_dp(observed):
    tokens = observed["tokens"]
    ref = tokens["tp1"]
    assert len(ref) == 3 and all(len(t) == 8 for t in ref)
    for key in ("tp2", "tp4", "dp2_tp2"):
        assert tokens[key] == ref, key


def test_kv_heads_replicated_for_tp4(observed):
    # 2 KV heads on 4 devices: each head kept twice, the cache holds 4 heads, one per device
    assert observed["runner_num_kv_heads"] == 4
    kv = observed["kv_cache"]
    assert kv["spec"] == "P(None, None, 'model')"
    assert kv["shape"] == [2, 64, 4, 16, 8] and kv["shard_shape"] == [2, 64, 1, 16, 8]


@pytest.mark.parametrize(
    "source", ["shards/tp2", "shards/tp4", "orbax_tp4", "dummy_tp2", "dummy_tp4"]
)
def test_param_shardings_follow_rules_and_hold_right_slices(observed, source):
    report = observed
    for key in source.split("/"):
        report = report[key]
    assert set(report) == set(EXPECTED_SPECS)
    n = int(source[-1])
    for path, (spec, contents_ok, devices) in report.items():
        assert spec == EXPECTED_SPECS[path], path
        assert contents_ok, f"{source}: a shard of {path} differs from the full array's slice"
        assert devices == list(range(n)), path


def test_step_has_no_weight_all_gather(observed):
    # one all-gather: the [T, V] logits (vocab-split LM head); all-reduces are [T, D]
    # activations (embedding lookup, o_proj, down_proj); nothing of weight size moves
    coll, T = observed["collectives"], observed["collectives_T"]
    assert coll["all-gather"] == [f"f32[{T},256]"]
    assert coll["all-reduce"] and set(coll["all-reduce"]) == {f"f32[{T},64]"}
    assert not coll["all-to-all"] and not coll["reduce-scatter"]


def test_dp_replicas_on_disjoint_devices_spread_by_load(observed):
    assert observed["dp_devices"] == [[0, 1], [2, 3]]
    assert observed["dp_first_pick"] == [True, False]  # idle: the lowest index
    assert observed["dp_owner"] == {"a": 0, "b": 1, "c": 0}  # fewest unfinished requests


def test_smollm2_tp3_equals_tp1(observed):
    tokens = observed["smollm2_tokens"]
    assert len(tokens["tp1"]) == 2 and all(len(t) == 5 for t in tokens["tp1"])
    assert tokens["tp3"] == tokens["tp1"]
    # the kept Q4_1 blocks [L, Hq*Dh, row_bytes]: split by output rows (heads)
    assert observed["smollm2_q_spec_tp3"] == ["P(None, 'model')", 3]
    assert observed["smollm2_q_spec_tp1"][1] == 1


def test_smollm2_tp2_rejected_naming_the_numbers(observed):
    msg = observed["smollm2_tp2_error"]
    assert msg is not None
    assert "tensor_parallel_size 2" in msg and "9 query heads" in msg and "3 KV heads" in msg
    assert "[1, 3]" in msg


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vocab_parallel_embedding_equals_plain_lookup(observed):
    """Exact at tp 2 and 4, one token or five, split tables and the replicated fallback (V = 62
    at tp 4); a one-token lookup at tp 2 all-reduces [1, D] and all-gathers nothing (the plain
    take all-gathered the whole table on the GPU)."""
    assert set(observed["embedding_max_abs_diff"].values()) == {0.0}
    coll = observed["embedding_collectives"]
    assert coll["all-gather"] == []
    assert coll["all-reduce"] == ["f32[1,8]"]


def test_two_process_multihost_matches_one_process(observed, llama_dir, tmp_path):
    """Two processes over loopback (jax.distributed, gloo), one CPU device each, tp=2 across
    them: process 0 schedules and broadcasts, process 1 replays; same tokens as one process."""
    worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    port = _free_port()
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(port), str(i), str(llama_dir), str(outs[i])],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=kill_with_parent,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    lead, follow = (json.loads(o.read_text()) for o in outs)
    assert lead["devices"] == follow["devices"] == 2
    assert lead["local_devices"] == follow["local_devices"] == 1
    assert lead["q_devices"] == follow["q_devices"] == 2
    assert lead["tokens"] == observed["tokens"]["tp1"]
    assert follow["steps"] >= 8  # one prefill step and 7 decode steps at least
