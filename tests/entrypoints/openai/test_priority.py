"""Request priorities through the OpenAI server (vLLM's `priority` extra body field).

Two real servers (FastAPI + uvicorn on free 127.0.0.1 ports, SmolLM2) built from `jaxllm serve`
arguments and queried with the official `openai` client:

- `--scheduling-policy priority` with max_num_seqs=1: the engine's steps are held (a gate around
  `LLMEngine.step`) while a burst of requests queues up, one at a time, so their arrival order is
  fixed; once released, the engine admits them by priority (lower first, ties by arrival), seen
  as the order in which their first tokens come out of the engine and the order they finish.
- the default fcfs policy: a non-zero priority is an OpenAI-shaped 400 naming `priority` (from the
  server's check, and from the engine's own check behind it) while another stream goes on.

Plus the protocol field's validation (strict int) and the `--scheduling-policy` flag.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from pydantic import ValidationError  # noqa: E402

from jaxllm import SamplingParams  # noqa: E402
from jaxllm.entrypoints.openai.api_server import Server, build_app, build_llm  # noqa: E402
from jaxllm.entrypoints.openai.protocol import (  # noqa: E402
    ChatCompletionRequest,
    CompletionRequest,
)
from jaxllm.entrypoints.openai.serve_args import resolve_serve_args, serve_parser  # noqa: E402

MODEL = "smollm2-135m"
ENGINE_ARGV = [
    "--max-model-len",
    "256",
    "--num-gpu-blocks",
    "16",
    "--block-size",
    "64",
    "--max-num-batched-tokens",
    "64",
]
PRIORITY_ARGV = [MODEL, *ENGINE_ARGV, "--max-num-seqs", "1", "--scheduling-policy", "priority"]
FCFS_ARGV = [MODEL, *ENGINE_ARGV, "--max-num-seqs", "4"]
TIMEOUT = 60.0
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
CHAT = [{"role": "user", "content": "Name a colour."}]


class Live:
    def __init__(self, server, ctx, llm, ref=None):
        self.server, self.ctx, self.llm, self.ref = server, ctx, llm, ref
        self.url = server.url

    def client(self):
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT
        )

    def post(self, path: str, body: dict) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        return httpx.post(
            self.url + path, content=json.dumps(body), headers=headers, timeout=TIMEOUT
        )


def _start(argv, smollm2, ref_fn=None):
    opts = resolve_serve_args(serve_parser().parse_args(argv))
    llm = build_llm(opts, model=smollm2)
    ref = ref_fn(llm) if ref_fn is not None else None  # before the server owns the engine
    app, ctx = build_app(llm, opts)
    return Live(Server(app).start(), ctx, llm, ref)


def _greedy_ref(llm):
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    return [o.outputs[0].text for o in llm.generate(PROMPTS, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def prio(smollm2):
    live = _start(PRIORITY_ARGV, smollm2, _greedy_ref)
    try:
        yield live
    finally:
        live.server.stop()


@pytest.fixture(scope="module")
def fcfs(smollm2):
    live = _start(FCFS_ARGV, smollm2)
    try:
        yield live
    finally:
        live.server.stop()


class StepGate:
    """Wraps `LLMEngine.step`: while closed, a step schedules nothing (the async engine still
    hands new requests to the scheduler between steps); once open, records the order in which
    request ids first appear in the outputs, and the order in which they finish."""

    def __init__(self, engine) -> None:
        self._step = engine.step
        self.open = threading.Event()
        self.started: list[str] = []
        self.finished: list[str] = []

    def step(self):
        if not self.open.is_set():
            self.open.wait(0.01)
            return []
        outputs = self._step()
        for out in outputs:
            if out.request_id not in self.started:
                self.started.append(out.request_id)
            if out.finished:
                self.finished.append(out.request_id)
        return outputs


def _wait_waiting(live: Live, n: int, timeout: float = 30.0) -> None:
    """Until the engine's scheduler holds `n` waiting sequences."""
    deadline = time.monotonic() + timeout
    while live.ctx.engine.stats().num_waiting != n:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{n} waiting sequences expected, stats: {live.ctx.engine.stats()}"
            )
        time.sleep(0.01)


# ------------------------------------------------------------------------------- priority server


def test_scheduling_policy_flag_reaches_the_engine(prio, fcfs):
    assert prio.llm.llm_engine.config.scheduler.policy == "priority"
    assert prio.llm.llm_engine.scheduler.priority is True
    assert prio.ctx.scheduling_policy == "priority"
    assert fcfs.llm.llm_engine.config.scheduler.policy == "fcfs"
    assert fcfs.ctx.scheduling_policy == "fcfs"


def test_later_higher_priority_requests_run_first(prio, monkeypatch):
    engine = prio.llm.llm_engine
    gate = StepGate(engine)
    monkeypatch.setattr(engine, "step", gate.step)
    c = prio.client()
    common = dict(model=MODEL, max_tokens=3, temperature=0)

    def low():  # arrives first, priority 5
        return c.completions.create(
            prompt=PROMPTS[0], extra_body={"ignore_eos": True, "priority": 5}, **common
        )

    def default():  # arrives second, no priority given (0)
        return c.chat.completions.create(messages=CHAT, **common)

    def high():  # arrives last, priority -3
        return c.completions.create(
            prompt=PROMPTS[1], extra_body={"ignore_eos": True, "priority": -3}, **common
        )

    with ThreadPoolExecutor(3) as pool:
        futures = []
        for i, fn in enumerate((low, default, high)):
            futures.append(pool.submit(fn))
            _wait_waiting(prio, i + 1)  # queued in the scheduler before the next one is sent
        gate.open.set()
        r_low, r_default, r_high = (f.result(timeout=TIMEOUT) for f in futures)
    # With one sequence at a time, admission order is the order of first outputs and of finishing;
    # FCFS would have given low, default, high.
    expected = [r_high.id, r_default.id, r_low.id]
    assert gate.started == expected
    assert gate.finished == expected
    # Priority changes when a request runs, not what it computes.
    assert [r_low.choices[0].text, r_high.choices[0].text] == prio.ref
    assert r_default.choices[0].finish_reason in ("length", "stop")
    assert prio.ctx.engine.stats().num_unfinished_requests == 0


def test_priority_server_accepts_priority_on_both_routes(prio):
    c = prio.client()
    resp = c.completions.create(
        model=MODEL,
        prompt=PROMPTS[0],
        max_tokens=3,
        temperature=0,
        extra_body={"ignore_eos": True, "priority": 7},
    )
    assert resp.choices[0].text == prio.ref[0]
    chat = c.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=2, temperature=0, extra_body={"priority": -1}
    )
    assert chat.choices[0].message.content is not None


# ----------------------------------------------------------------------------------- fcfs server


def _assert_priority_400(err: openai.BadRequestError) -> dict:
    assert err.status_code == 400
    body = err.response.json()
    assert set(body) == {"error"}
    e = body["error"]
    assert set(e) == {"message", "type", "param", "code"}
    assert e["param"] == "priority" and e["type"] == "invalid_request_error"
    assert "priority" in e["message"]
    return e


def test_fcfs_server_refuses_priority_while_others_go_on(fcfs):
    c = fcfs.client()
    stream = c.completions.create(
        model=MODEL,
        prompt=PROMPTS[0],
        max_tokens=12,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    first = next(chunks)  # the stream runs while the bad requests come in
    for prio_value in (3, -1):
        with pytest.raises(openai.BadRequestError) as ei:
            c.completions.create(
                model=MODEL, prompt=PROMPTS[1], max_tokens=2, extra_body={"priority": prio_value}
            )
        e = _assert_priority_400(ei.value)
        assert str(prio_value) in e["message"] and "--scheduling-policy priority" in e["message"]
        with pytest.raises(openai.BadRequestError) as ei:
            c.chat.completions.create(
                model=MODEL, messages=CHAT, max_tokens=2, extra_body={"priority": prio_value}
            )
        _assert_priority_400(ei.value)
    rest = list(chunks)
    text = first.choices[0].text + "".join(ch.choices[0].text for ch in rest if ch.choices)
    assert rest[-1].choices[0].finish_reason == "length"
    assert len(fcfs.llm.tokenizer.encode(text, add_special_tokens=False)) in range(10, 15)
    # priority 0, given explicitly, is every request's default: fine under fcfs.
    ok = c.completions.create(
        model=MODEL, prompt=PROMPTS[1], max_tokens=2, temperature=0, extra_body={"priority": 0}
    )
    assert ok.choices[0].finish_reason in ("length", "stop")
    assert fcfs.ctx.engine.stats().num_unfinished_requests == 0


def test_fcfs_engine_check_behind_the_server_check(fcfs, monkeypatch):
    """With the server's own check out of the way, the priority still reaches the engine through
    the async engine, whose refusal (a ValueError) becomes the same 400."""
    monkeypatch.setattr(fcfs.ctx, "scheduling_policy", "priority")
    with pytest.raises(openai.BadRequestError) as ei:
        fcfs.client().completions.create(
            model=MODEL, prompt=PROMPTS[0], max_tokens=2, extra_body={"priority": 2}
        )
    e = _assert_priority_400(ei.value)
    assert "scheduling_policy" in e["message"] and "'fcfs'" in e["message"]
    assert fcfs.ctx.engine.stats().num_unfinished_requests == 0


@pytest.mark.parametrize("value", ["high", 1.5, 2.0, "3", True, None, [1]])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_non_int_priority_is_a_400(fcfs, path, value):
    body: dict = {"model": MODEL, "max_tokens": 1, "priority": value}
    if path == "/v1/completions":
        body["prompt"] = PROMPTS[0]
    else:
        body["messages"] = CHAT
    resp = fcfs.post(path, body)
    assert resp.status_code == 400, resp.text
    e = resp.json()["error"]
    assert e["param"] == "priority" and e["code"] == "invalid_value"
    assert "priority" in e["message"]


# ------------------------------------------------------------------------------ model-free units


def test_protocol_priority_field():
    assert CompletionRequest(prompt="x").priority == 0
    assert CompletionRequest(prompt="x", priority=-4).priority == -4
    assert (
        ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], priority=9).priority == 9
    )
    for bad in ("1", 1.0, True, "high", None):
        with pytest.raises(ValidationError) as ei:
            CompletionRequest.model_validate({"prompt": "x", "priority": bad})
        assert ei.value.errors()[0]["loc"] == ("priority",)
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate(
                {"messages": [{"role": "user", "content": "x"}], "priority": bad}
            )


def test_scheduling_policy_flag_parses():
    parser = serve_parser()
    opts = resolve_serve_args(parser.parse_args([MODEL, "--scheduling-policy", "priority"]))
    assert opts.engine_kwargs == {"model": MODEL, "scheduling_policy": "priority"}
    assert "scheduling_policy" not in resolve_serve_args(parser.parse_args([MODEL])).engine_kwargs
    with pytest.raises(SystemExit):
        parser.parse_args([MODEL, "--scheduling-policy", "lifo"])
