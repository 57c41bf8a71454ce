"""Hugging Face hub ids as models (jaxllm/model_loader/hub.py), offline, against a hub cache laid
out in tmp_path the way huggingface_hub lays out the snapshots it downloads (checked with
huggingface_hub's own `scan_cache_dir`): `models--ORG--NAME/blobs/<hash>` holds each file's bytes,
`snapshots/<commit>/<file>` is a relative symlink to its blob, `refs/<branch or tag>` holds a
commit hash. The loaded models are compared with loading the same files from a plain folder.

huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, into `huggingface_hub.constants`, when
it is first imported (here: before any test sets them). jaxllm's hub.py reads both from the
environment at each call and passes the cache folder explicitly, so the tests only set the
environment variables (monkeypatch), and `huggingface_hub.constants.HF_HUB_OFFLINE` is forced to
False to show that jaxllm honours the variable itself. No test reaches the network: the download
path runs against fakes of huggingface_hub's download calls, or a local HTTP server.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.server
import json
import os
import shutil
import threading

import huggingface_hub
import numpy as np
import pytest
import transformers
from huggingface_hub import constants as hub_constants
from loader_helpers import SMALL, assert_tree_close, build_tiny_llama_gguf, save_hf_model

from jaxllm.model_loader import ACCEPTED_FORMS, ModelNotFoundError, hub, load_model
from jaxllm.models.step import full_logits

REPO = "org/tiny-llama"
COMMIT_MAIN = hashlib.sha1(b"main").hexdigest()
COMMIT_V1 = hashlib.sha1(b"v1").hexdigest()
SEQS = [[3, 1, 4, 1, 5, 9, 2, 6], list(range(5, 40))]


def put_in_cache(cache, repo_id, commit, folder, refs=(), names=None):
    """Lay out `folder`'s files (or just `names`) as huggingface_hub's cache holds a snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for name in sorted(names if names is not None else os.listdir(folder)):
        data = (folder / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


def save_tokenizer(folder) -> None:
    """A word-level tokenizer over the tiny model's 96 ids (built here: no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, SMALL["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two commits of one repo as plain folders: main (sharded, with a tokenizer) and v1."""
    main = tmp_path_factory.mktemp("main")
    save_hf_model(main, transformers.LlamaConfig(**SMALL), seed=0, max_shard_size="40KB")
    save_tokenizer(main)
    assert (main / "model.safetensors.index.json").is_file()
    v1 = tmp_path_factory.mktemp("v1")
    save_hf_model(v1, transformers.LlamaConfig(**SMALL, tie_word_embeddings=True), seed=1)
    assert (v1 / "model.safetensors").is_file()
    return {"main": main, "v1": v1}


@pytest.fixture
def no_network(monkeypatch):
    """Any download call fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.fixture
def hub_env(tmp_path, monkeypatch, sources):
    """The hub cache (HF_HUB_CACHE) holding REPO: main -> COMMIT_MAIN; tag v1.0 and branch dev
    -> COMMIT_V1. HF_HUB_OFFLINE=1, and huggingface_hub's import-time copy of it False."""
    folder = tmp_path / "hf_home" / "hub"
    put_in_cache(folder, REPO, COMMIT_MAIN, sources["main"], refs=("main",))
    put_in_cache(folder, REPO, COMMIT_V1, sources["v1"], refs=("v1.0", "dev"))
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    return folder


@pytest.fixture
def cache(hub_env, no_network):
    """`hub_env`, offline, with every download call failing the test."""
    return hub_env


def assert_same_model(got, want, logits=True):
    """Same config, bit-equal params and (with `logits`) equal logits through the paged step."""
    assert got.config == want.config
    assert_tree_close(got.params, jax_to_numpy(want.params), atol=0.0)
    if not logits:
        return
    for a, b in zip(
        full_logits(got.params, got.config, SEQS, backend="reference"),
        full_logits(want.params, want.config, SEQS, backend="reference"),
    ):
        np.testing.assert_array_equal(a, b)


def jax_to_numpy(tree):
    import jax

    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


# ---------------------------------------------------------------------------- the cache layout


def test_fake_cache_is_what_huggingface_hub_reads(cache):
    (repo,) = huggingface_hub.scan_cache_dir(cache).repos
    assert (repo.repo_id, repo.repo_type) == (REPO, "model")
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {
        COMMIT_MAIN: {"main"},
        COMMIT_V1: {"v1.0", "dev"},
    }
    main = next(r for r in repo.revisions if r.commit_hash == COMMIT_MAIN)
    assert "model.safetensors.index.json" in {f.file_name for f in main.files}


# ------------------------------------------------------------------------------ loading hub ids


def test_hub_id_loads_its_cached_snapshot_like_the_folder(cache, sources):
    got = load_model(REPO)
    want = load_model(str(sources["main"]))
    assert got.format == "hf"
    assert str(cache / "models--org--tiny-llama" / "snapshots" / COMMIT_MAIN) in got.source
    assert_same_model(got, want)
    assert got.generation_config == want.generation_config
    # the tokenizer comes from the same snapshot
    assert got.tokenizer is not None
    assert got.tokenizer.encode("w5 w7 w9", add_special_tokens=False) == [5, 7, 9]


@pytest.mark.parametrize("revision", ["v1.0", "dev", COMMIT_V1])
def test_revision_as_tag_branch_or_commit(cache, sources, revision):
    got = load_model(REPO, revision=revision, tokenizer=False)
    assert_same_model(got, load_model(str(sources["v1"]), tokenizer=False), logits=False)
    assert COMMIT_V1 in got.source


def test_commit_hash_of_main(cache, sources):
    got = load_model(REPO, revision=COMMIT_MAIN, tokenizer=False)
    assert_same_model(got, load_model(str(sources["main"]), tokenizer=False), logits=False)


def test_cache_under_hf_home(cache, sources, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    assert hub.hub_cache_dir() == str(cache)
    got = load_model(REPO, revision="v1.0", tokenizer=False)
    assert COMMIT_V1 in got.source


def test_a_local_folder_wins_over_a_hub_id(cache, sources, monkeypatch, tmp_path):
    local = tmp_path / "work"
    shutil.copytree(sources["v1"], local / "org" / "tiny-llama")
    monkeypatch.chdir(local)
    got = load_model(REPO, tokenizer=False)
    assert got.source.startswith(str(local)) and COMMIT_MAIN not in got.source


# ------------------------------------------------------------------------------------ errors


def test_missing_id_offline_names_id_revision_and_cache(cache):
    with pytest.raises(ModelNotFoundError) as err:
        load_model("Qwen/Qwen3-0.6B", revision="v2")
    msg = str(err.value)
    for part in ("'Qwen/Qwen3-0.6B'", "(revision 'v2')", str(cache), "HF_HUB_OFFLINE=1"):
        assert part in msg
    with pytest.raises(ModelNotFoundError, match=r"^model 'gpt2' is not a local path"):
        load_model("gpt2")


def test_transformers_offline_counts_too(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "true")
    with pytest.raises(ModelNotFoundError, match="TRANSFORMERS_OFFLINE=1 forbids"):
        load_model("org/absent")


def test_unknown_revision_of_a_cached_repo(cache):
    with pytest.raises(ModelNotFoundError, match=r"'org/tiny-llama' \(revision 'nope'\)"):
        load_model(REPO, revision="nope")


def test_incomplete_snapshot_offline(cache, sources):
    put_in_cache(cache, "org/only-config", COMMIT_MAIN, sources["main"], ("main",), ["config.json"])
    with pytest.raises(ModelNotFoundError, match=r"lacks the weights .*HF_HUB_OFFLINE=1 forbids"):
        load_model("org/only-config")
    index = json.loads((sources["main"] / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    keep = ["config.json", "model.safetensors.index.json", *shards[1:]]
    put_in_cache(cache, "org/one-shard-short", COMMIT_MAIN, sources["main"], ("main",), keep)
    with pytest.raises(ModelNotFoundError, match=rf"lacks 1 of the {len(shards)} weight files"):
        load_model("org/one-shard-short")


def test_gguf_only_repo(cache, tmp_path):
    src = tmp_path / "gguf_src"
    src.mkdir()
    build_tiny_llama_gguf(src / "tiny.Q8_0.gguf")
    put_in_cache(cache, "org/tiny-gguf", COMMIT_MAIN, src, ("main",))
    got = load_model("org/tiny-gguf", tokenizer=False)
    assert got.format == "gguf" and got.source.endswith("tiny.Q8_0.gguf")
    assert_same_model(got, load_model(str(src / "tiny.Q8_0.gguf"), tokenizer=False), logits=False)
    shutil.copy(src / "tiny.Q8_0.gguf", src / "tiny.F16.gguf")
    put_in_cache(cache, "org/two-ggufs", COMMIT_MAIN, src, ("main",))
    with pytest.raises(ValueError, match=r"2 \.gguf files \(tiny\.F16\.gguf, tiny\.Q8_0\.gguf\)"):
        load_model("org/two-ggufs")


@pytest.mark.parametrize("model", ["./absent", "absent.gguf", "a/b/c", "/abs/absent", "x--y/z"])
def test_strings_that_are_no_hub_id_keep_the_path_error(cache, model):
    assert not hub.is_hub_id(model)
    with pytest.raises(ModelNotFoundError, match="no such file or folder") as err:
        load_model(model)
    assert ACCEPTED_FORMS in str(err.value) and "hub id" in ACCEPTED_FORMS


def test_hub_id_shapes():
    for ok in ("Qwen/Qwen3-0.6B", "gpt2", "meta-llama/Llama-3.2-1B-Instruct", "a_b/c.d"):
        assert hub.is_hub_id(ok)
    for bad in ("", "/x", "a/", "-a/b", "a./b", "a..b", "a/b.git", "a b", "dummy:tiny"):
        assert not hub.is_hub_id(bad)


def test_revision_needs_a_hub_id(cache, sources):
    with pytest.raises(ValueError, match=r"revision 'main' applies to Hugging Face hub ids only"):
        load_model(str(sources["main"]), revision="main")
    with pytest.raises(ValueError, match="hub ids only, not to 'dummy:tiny'"):
        load_model("dummy:tiny", revision="main")


# ------------------------------------------------------------------- the download (no network)


def test_download_fetches_only_what_jaxllm_reads(cache, sources, monkeypatch):
    """Online: the repo listing, the index, then exactly the files jaxllm reads, into the cache
    (a fake hub serves `sources['main']` plus files jaxllm must skip); then offline, the cache."""
    src = sources["main"]
    extra = [
        "consolidated.safetensors",
        "pytorch_model.bin",
        "README.md",
        ".gitattributes",
        "onnx/model.safetensors",
        "original/params.json",
    ]
    listing = sorted(os.listdir(src)) + extra
    calls = []
    real_snapshot_download = huggingface_hub.snapshot_download
    repo_id = "org/fresh"

    def list_repo_files(self, repo, revision=None, **kw):
        calls.append(("list", repo, revision))
        return listing

    def hf_hub_download(repo, filename, revision=None, cache_dir=None, **kw):
        calls.append(("file", filename, revision))
        snap = put_in_cache(cache, repo, COMMIT_MAIN, src, ("main",), [filename])
        return str(snap / filename)

    def snapshot_download(repo, revision=None, cache_dir=None, allow_patterns=None, **kw):
        assert cache_dir == str(cache)
        if kw.get("local_files_only"):
            return real_snapshot_download(
                repo, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns, **kw
            )
        names = [n for n in listing if any(fnmatch.fnmatchcase(n, p) for p in allow_patterns)]
        calls.append(("snapshot", tuple(names), revision))
        return str(put_in_cache(cache, repo, COMMIT_MAIN, src, ("main",), names))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    got = load_model(repo_id)
    assert_same_model(got, load_model(str(src)), logits=False)
    assert got.tokenizer is not None
    assert calls[:2] == [("list", repo_id, None), ("file", "model.safetensors.index.json", None)]
    ((kind, names, _),) = calls[2:]
    assert kind == "snapshot"
    assert set(names) == set(os.listdir(src))  # config, index, shards, tokenizer files
    assert not set(names) & set(extra)
    calls.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # now from the cache alone
    load_model(repo_id, tokenizer=False)
    assert calls == []


def test_files_to_fetch_picks_the_weights():
    def no_index():
        raise AssertionError("no index to read")

    meta = ["config.json", "tokenizer.json"]
    assert hub._files_to_fetch("o/n", [*meta, "model.safetensors", "x.gguf"], no_index) == [
        *meta,
        "model.safetensors",
    ]
    assert hub._files_to_fetch("o/n", ["README.md", "m.Q4_K_M.gguf"], no_index) == ["m.Q4_K_M.gguf"]
    with pytest.raises(ValueError, match=r"2 \.gguf files \(a\.gguf, b\.gguf\).*hf download o/n"):
        hub._files_to_fetch("o/n", ["a.gguf", "b.gguf"], no_index)
    with pytest.raises(ModelNotFoundError, match="neither safetensors weights"):
        hub._files_to_fetch("o/n", ["config.json", "pytorch_model.bin"], no_index)


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers every request as the hub answers an unknown repo or revision."""

    def do_GET(self):
        code = "RevisionNotFound" if "/tiny-llama" in self.path else "RepoNotFound"
        body = json.dumps({"error": code}).encode()
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def online(hub_env, monkeypatch):
    """Downloads allowed, against a local fake hub (no internet)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield
    server.shutdown()
    server.server_close()


def test_unknown_repo_and_revision_on_the_hub(online):
    with pytest.raises(ModelNotFoundError, match="hub has no repository 'org/absent'"):
        load_model("org/absent")
    with pytest.raises(ModelNotFoundError, match=r"\(revision 'nope'\).*has no revision 'nope'"):
        load_model(REPO, revision="nope")


def test_network_failure(online, monkeypatch):
    import socket

    from huggingface_hub.utils import _http as http_utils

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    # huggingface_hub retries a refused connection with backoff (about 23 s of sleeping)
    monkeypatch.setattr(http_utils.time, "sleep", lambda seconds: None)
    with pytest.raises(ModelNotFoundError) as err:
        load_model("org/absent", revision="v3")
    msg = str(err.value)
    assert "model 'org/absent' (revision 'v3') is not in the local Hugging Face cache" in msg
    assert "could not be downloaded" in msg


# ------------------------------------------------------------------------- flags and the CLI


def test_revision_flag_and_yaml_key(tmp_path):
    from jaxllm.entrypoints.cli_args import build_parser, generate_parser, resolve_generate_args
    from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser

    argv = ["generate", "--model", REPO, "--revision", "v1.0", "hi"]
    opts = resolve_generate_args(build_parser().parse_args(argv))
    assert opts.engine_kwargs == {"model": REPO, "revision": "v1.0"}
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {REPO}\nrevision: dev\n")
    opts = resolve_generate_args(build_parser().parse_args(["generate", "--config", str(config)]))
    assert opts.engine_kwargs == {"model": REPO, "revision": "dev"}
    serve = resolve_serve_args(serve_parser().parse_args([REPO, "--revision", COMMIT_V1]))
    assert serve.engine_kwargs == {"model": REPO, "revision": COMMIT_V1}
    assert serve.served_model_names == [REPO]
    conv = build_parser().parse_args(["convert", REPO, "out", "--revision", "v1.0"])
    assert (conv.model, conv.revision) == (REPO, "v1.0")
    assert "--revision" in generate_parser().format_help()


def test_bench_passes_the_revision_to_the_loader(monkeypatch):
    import argparse

    import jaxllm.model_loader as loader
    from jaxllm.benchmarks.engine_setup import add_bench_engine_args, load_model_once

    parser = argparse.ArgumentParser()
    add_bench_engine_args(parser)
    args = parser.parse_args(["--model", REPO, "--revision", "v1.0"])
    seen = {}
    monkeypatch.setattr(loader, "load_model", lambda model, **kw: seen.update(model=model, **kw))
    load_model_once(args)
    assert seen["model"] == REPO and seen["revision"] == "v1.0"


def test_cli_generate_with_revision(cache, sources, capsys):
    """`jaxllm generate --model ORG/NAME --revision REV`: the greedy token is the argmax of REV's
    logits, computed here from the plain folder."""
    from jaxllm.entrypoints import cli

    want = load_model(str(sources["v1"]), tokenizer=False)
    prompt = [5, 17, 33, 2, 60]
    logits = full_logits(want.params, want.config, [prompt], backend="reference")[0]
    prompts = cache.parent / "p.jsonl"
    prompts.write_text(json.dumps({"prompt_token_ids": prompt}) + "\n")
    argv = ["generate", "--model", REPO, "--revision", "v1.0", "--prompts-file", str(prompts)]
    argv += ["--temperature", "0", "--max-tokens", "1", "--json", "--no-progress"]
    argv += ["--max-model-len", "64", "--max-num-seqs", "2"]
    assert cli.main(argv) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["outputs"][0]["token_ids"] == [int(np.argmax(logits[-1]))]


def test_cli_prints_a_missing_hub_id_without_traceback(cache, capsys):
    from jaxllm.entrypoints import cli

    assert cli.main(["generate", "--model", "org/absent", "--revision", "v9", "hi"]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("jaxllm generate: error:")]
    assert line.startswith(
        "jaxllm generate: error: cannot start the engine: model 'org/absent' (revision 'v9') "
        "is not a local path"
    )
    assert "HF_HUB_OFFLINE=1" in line and "Traceback" not in err
