"""The real server on SmolLM2 (live_server.py) under bad and hostile requests: bad input of each
kind while other streams go on, big bodies and request chat templates while 16 streams run
(nothing stalls the event loop), API keys, and last a failing engine step. One server per module,
without the reference answers test_openai_server.py compares with.
"""

from __future__ import annotations

import asyncio
import json

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from live_server import (  # noqa: E402
    CHAT,
    KEY,
    MODEL,
    TIMEOUT,
    bad_requests,
    serving,
    stream_completion,
    watch_stalls,
)


@pytest.fixture(scope="module")
def live(smollm2):
    with serving(smollm2, references=False) as running:
        yield running


# ---------------------------------------------------------------------------------------- bad input


def test_bad_inputs_get_their_status_while_streams_go_on(live):
    cases = bad_requests(live)

    async def run():
        async with live.aclient() as client:
            streams = [
                asyncio.ensure_future(stream_completion(client, f"Background {i}:", 40))
                for i in range(4)
            ]
            headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
            async with httpx.AsyncClient(
                base_url=live.url, headers=headers, timeout=TIMEOUT
            ) as raw:
                await asyncio.sleep(0.5)
                answers = []
                for path, body, *_ in cases:
                    content = body if isinstance(body, str) else json.dumps(body)
                    answers.append(await raw.post(path, content=content))
                unauth = [
                    await raw.post(
                        "/v1/completions",
                        json={"model": MODEL, "prompt": "x"},
                        headers={"Authorization": ""},
                    ),
                    await raw.post(
                        "/v1/completions",
                        json={"model": MODEL, "prompt": "x"},
                        headers={"Authorization": "Bearer wrong"},
                    ),
                    await raw.get("/v1/models", headers={"Authorization": "Basic " + KEY}),
                ]
            return answers, unauth, await asyncio.wait_for(asyncio.gather(*streams), timeout=240)

    answers, unauth, streamed = asyncio.run(run())
    for (_path, body, status, param, text), resp in zip(cases, answers):
        assert resp.status_code == status, (body, resp.text)
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["param"] == param, (body, err)
        for piece in (text,) if isinstance(text, str) else (text or ()):
            assert piece in err["message"], (body, err)
    for resp in unauth:
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(live.url + "/health").status_code == 200  # no key needed outside /v1
    for r in streamed:
        assert r["tokens"] == 40 and r["finish"] == "length"
    live.wait_idle()


# -------------------------------------------------------------------- event-loop stalls (issue 27)

# The goal is 100 ms. /health measures the event loop alone; its bound leaves room for the 2-core
# CI machine (measured there: 30 to 60 ms during these attacks, ~120 ms at worst when idle; 5 to
# 8 s before the work moved off the loop). A gap between stream chunks also holds an engine step:
# 110 to 230 ms with 16 streams on 2 cores when nothing else runs, up to ~400 ms while a 4 MiB
# tokenization takes one of the two cores; its bound only rules out stalls of the loop.
HEALTH_BOUND_S = 0.25
CHUNK_GAP_BOUND_S = 1.0


def test_big_bodies_and_request_templates_stall_no_stream_or_health(live):
    """While 16 streams run: a 4 MiB /tokenize body is tokenized off the event loop under the
    body limit, and refused with a 413 over it; a request's own chat_template is a 400 without
    --trust-request-chat-template, and renders off the loop with it (a template that loops 2.25M
    times, then writes a prompt over the context length: a 400 that counts its tokens, so the
    request takes no sequence slot from the streams). Stream chunks and /health keep coming."""
    ctx = live.ctx
    old_limit = ctx.max_request_body_bytes
    big = ("The quick brown fox jumps over the lazy dog. " * 100000)[: 4 << 20]
    tokenize_body = json.dumps({"model": MODEL, "prompt": big})
    heavy = (
        "{% for i in range(1500) %}{% for j in range(1500) %}{% endfor %}{% endfor %}"
        "{% for i in range(200) %}{{ messages[0].content }} {% endfor %}"
    )
    template = {"chat_template": heavy}
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def run():
        # the clients are made before the watch starts: making one (its SSL context) holds the
        # GIL of this process, the server's, for 20-40 ms
        async with (
            httpx.AsyncClient(base_url=live.url, headers=headers, timeout=TIMEOUT) as raw,
            live.aclient() as client,
        ):

            async def attack():
                ctx.max_request_body_bytes = 8 << 20
                served = await raw.post("/tokenize", content=tokenize_body)
                ctx.max_request_body_bytes = 1 << 20
                refused = await raw.post("/tokenize", content=tokenize_body)
                errors = []
                for trusted in (False, True):
                    ctx.trust_request_chat_template = trusted
                    with pytest.raises(openai.BadRequestError) as e:
                        await client.chat.completions.create(
                            model=MODEL, messages=CHAT, max_tokens=1, extra_body=template
                        )
                    errors.append(e.value.body)
                return served, refused, errors

            return await watch_stalls(live.url, attack, streams=16, max_tokens=32)

    try:
        out = asyncio.run(run())
    finally:
        ctx.max_request_body_bytes = old_limit
        ctx.trust_request_chat_template = False
    served, refused, (untrusted, trusted) = out["result"]
    print(
        f"\n[loop stalls] attacks {out['attack_s']:.2f} s: largest chunk gap "
        f"{out['max_chunk_gap_s'] * 1000:.0f} ms over {out['chunks']} chunks, largest /health "
        f"{out['max_health_s'] * 1000:.0f} ms over {out['probes']} probes"
    )
    assert served.status_code == 200, served.text[:300]
    tokens = served.json()
    assert tokens["count"] == len(tokens["tokens"]) > 900_000
    assert tokens["tokens"][:32] == live.tokenizer.encode(big[:400])[:32]
    assert refused.status_code == 413
    err = refused.json()["error"]
    assert err["code"] == "request_too_large" and f"{1 << 20} bytes" in err["message"]
    assert (untrusted["param"], untrusted["code"]) == ("chat_template", "untrusted_chat_template")
    assert "--trust-request-chat-template" in untrusted["message"]
    rendered = " ".join([CHAT[0]["content"]] * 200) + " "
    n_rendered = len(live.tokenizer.encode(rendered, add_special_tokens=False))
    assert trusted["code"] == "context_length_exceeded"
    assert f"your prompt is {n_rendered} tokens long" in trusted["message"]
    assert out["max_health_s"] < HEALTH_BOUND_S, out
    assert out["max_chunk_gap_s"] < CHUNK_GAP_BOUND_S, out
    live.wait_idle()


def test_wrong_key_with_the_openai_client(live):
    with pytest.raises(openai.AuthenticationError) as e:
        live.client(key="not-the-key").completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert e.value.status_code == 401
    with pytest.raises(openai.NotFoundError):
        live.client().completions.create(model="other-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        live.client().completions.create(model=MODEL, prompt="x", max_tokens=1, top_p=7)
    assert e.value.body["param"] == "top_p"


# ------------------------------------------------------------------------------ last: a dead engine


def test_a_failing_engine_step_is_reported_and_nothing_hangs(live):
    """Runs last (it stops the engine loop): an exception inside a step ends the open streams with
    an error event, later requests get 503 `engine_dead`, /health turns 503; the HTTP side lives."""

    def broken_step():
        raise RuntimeError("injected step failure")

    live.ctx.engine.engine.step = broken_step
    lines = []
    with httpx.stream(
        "POST",
        live.url + "/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": MODEL, "prompt": "Hello", "max_tokens": 5, "stream": True},
        timeout=TIMEOUT,
    ) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    err = json.loads(lines[-2][len("data: ") :])["error"]
    assert err["code"] == "engine_dead" and "injected step failure" in err["message"]
    after = live.post("/v1/chat/completions", {"model": MODEL, "messages": CHAT})
    assert after.status_code == 503 and after.json()["error"]["code"] == "engine_dead"
    assert httpx.get(live.url + "/health").status_code == 503
    assert httpx.get(live.url + "/metrics").status_code == 200
