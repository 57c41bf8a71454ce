"""A server app built in-process (a test, a notebook) lets its engine go once it is stopped and
dropped: FastAPI keeps every endpoint function in a module-level cache, so an endpoint that
closed over the engine kept its KV cache and weights alive for the rest of the process."""

from __future__ import annotations

import gc
import weakref

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from jaxllm import LLM  # noqa: E402
from jaxllm.entrypoints.openai.api_server import Server, build_app  # noqa: E402
from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser  # noqa: E402


def test_a_stopped_app_releases_its_engine(smollm2):
    llm = LLM(smollm2, max_model_len=128, num_gpu_blocks_override=16)
    app, ctx = build_app(llm, resolve_serve_args(serve_parser().parse_args(["smollm2-135m"])))
    server = Server(app).start()
    try:
        assert httpx.get(server.url + "/health", timeout=30).status_code == 200
        models = httpx.get(server.url + "/v1/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["smollm2-135m"]
    finally:
        server.stop()
    engine = weakref.ref(llm.llm_engine)
    del llm, app, ctx, server
    gc.collect()
    assert engine() is None
