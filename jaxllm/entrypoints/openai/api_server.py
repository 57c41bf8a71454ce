"""The OpenAI-compatible HTTP server: a FastAPI app over an AsyncLLMEngine, run by uvicorn.

    jaxllm serve smollm2-135m --port 8000 --api-key sk-local
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-local")

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models (the served names and
the LoRA adapters; Bearer auth on every /v1 route when an API key is set), POST
/v1/load_lora_adapter and /v1/unload_lora_adapter (only when JAXLLM_ALLOW_RUNTIME_LORA_UPDATING or
VLLM_ALLOW_RUNTIME_LORA_UPDATING is true: serving_models), POST /tokenize, POST /detokenize,
GET /health (200; 503 once the engine loop died or while the server shuts down), GET /metrics
(Prometheus text), GET /version.
Request bodies over --max-request-body-bytes get a 413 (body_limit); templating and tokenization
run on a worker pool, off the event loop (offload).

In-process use (tests, notebooks): `app, ctx = build_app(llm, opts)` then run `app` under any ASGI
server; `Server(app, host, port)` below starts uvicorn in a thread and reports the bound port.

`jaxllm serve` runs the app under `ServeServer`, which adds what a supervised process needs:
- SIGTERM or SIGINT starts a drain: new requests get 503 (`shutting_down`), /health answers 503,
  the listener keeps accepting connections (probes get their 503, not a refused connection), and
  in-flight requests run for up to `--shutdown-timeout` seconds; those still running then are
  aborted (each stream ends with a `finish_reason` "abort" chunk and `[DONE]`), and uvicorn shuts
  down. The exit status is 0. A second SIGTERM/SIGINT during the drain or the shutdown ends the
  process at once, killed by that signal.
- `--exit-on-engine-error` (the default): once the engine loop died, the open streams end with
  their error event and the process exits with status 1, for a supervisor to restart it.
  `--no-exit-on-engine-error` keeps serving, every request and /health answering 503.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import secrets
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, NoReturn

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from jaxllm.engine.async_engine import AsyncLLMEngine
from jaxllm.entrypoints.openai.body_limit import BodySizeLimitMiddleware
from jaxllm.entrypoints.openai.errors import OpenAIError, install_error_handlers, unauthorized
from jaxllm.entrypoints.openai.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from jaxllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    UnloadLoRAAdapterRequest,
)
from jaxllm.entrypoints.openai.reasoning_parsers import get_reasoning_parser
from jaxllm.entrypoints.openai.serve_args import ServeOptions
from jaxllm.entrypoints.openai.serving_chat import create_chat_completion
from jaxllm.entrypoints.openai.serving_common import ServerContext
from jaxllm.entrypoints.openai.serving_completions import create_completion
from jaxllm.entrypoints.openai.serving_models import (
    RUNTIME_LORA_ENV,
    ServingModels,
    runtime_lora_updating,
)
from jaxllm.entrypoints.openai.serving_tokenize import create_detokenize, create_tokenize
from jaxllm.entrypoints.openai.tool_parsers import get_tool_parser

logger = logging.getLogger(__name__)

__all__ = [
    "APIKeyMiddleware",
    "InFlightRequests",
    "ServeServer",
    "Server",
    "build_app",
    "build_llm",
    "run_serve",
]

# Paths that a shutdown does not wait for (probes and scrapes answer at once).
_UNTRACKED_PATHS = frozenset({"/health", "/metrics"})


class APIKeyMiddleware:
    """Pure ASGI middleware: `Authorization: Bearer KEY` on every /v1 route (401 otherwise).

    (A pure ASGI middleware, not BaseHTTPMiddleware, so streaming responses and client-disconnect
    cancellation pass through untouched.)"""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/v1")
            and scope["method"] != "OPTIONS"
        ):
            header = dict(scope.get("headers") or []).get(b"authorization")
            error = None
            if header is None:
                error = "Missing API key: send it as 'Authorization: Bearer <key>'."
            else:
                scheme, _, token = header.partition(b" ")
                if scheme.lower() != b"bearer" or not secrets.compare_digest(
                    token.strip(), self._key
                ):
                    error = "Incorrect API key provided."
            if error is not None:
                resp = unauthorized(error).response()
                resp.headers["WWW-Authenticate"] = "Bearer"
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


class InFlightRequests:
    """How many HTTP requests are being served (a streaming response counts until its last byte
    is sent), probes and scrapes aside: what a shutdown drains. `app.state.in_flight`."""

    def __init__(self) -> None:
        self.count = 0


class InFlightMiddleware:
    """Pure ASGI middleware keeping an `InFlightRequests` count."""

    def __init__(self, app: Any, counter: InFlightRequests) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in _UNTRACKED_PATHS:
            await self.app(scope, receive, send)
            return
        self.counter.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.counter.count -= 1


def build_llm(opts: ServeOptions, model: Any = None) -> Any:
    """The `LLM` the server runs (model: a LoadedModel to reuse instead of opts' model)."""
    from jaxllm.entrypoints.llm import LLM

    kwargs = dict(opts.engine_kwargs)
    if model is not None:
        kwargs["model"] = model
    return LLM(**kwargs)


def build_app(llm: Any, opts: ServeOptions) -> tuple[FastAPI, ServerContext]:
    """The FastAPI app serving `llm` (a jaxllm.LLM); the engine thread starts with the app.
    `opts.lora_modules` are loaded here, before anything is served: ValueError naming an adapter
    that cannot load."""
    engine = llm.llm_engine
    names = opts.served_model_names or [str(opts.engine_kwargs.get("model", "model"))]
    models = ServingModels(names, lora_enabled=getattr(engine, "lora_config", None) is not None)
    models.add_static(engine, opts.lora_modules)
    async_engine = AsyncLLMEngine(engine, max_waiting_requests=opts.max_waiting_requests)
    spec = getattr(engine, "speculative_config", None)
    metrics = ServerMetrics(
        names[0], async_engine.stats, spec.num_speculative_tokens if spec is not None else None
    )
    async_engine.stat_listener = metrics
    ctx = ServerContext(
        engine=async_engine,
        tokenizer=llm.tokenizer,
        served_model_names=list(names),
        max_model_len=engine.config.scheduler.max_model_len,
        max_logprobs=engine.config.max_logprobs,
        vocab_size=engine.model_config.vocab_size,
        chat_template=llm.chat_template,
        model_source=str(getattr(llm, "model_source", "")),
        retry_after_s=opts.retry_after,
        scheduling_policy=engine.config.scheduler.policy,
        default_sampling=dict(getattr(llm, "default_sampling_kwargs", {})),
        structured_outputs_config=opts.structured_outputs_config,
        enable_auto_tools=opts.enable_auto_tool_choice,
        tool_parser=get_tool_parser(opts.tool_call_parser) if opts.tool_call_parser else None,
        reasoning_parser=get_reasoning_parser(opts.reasoning_parser)
        if opts.reasoning_parser
        else None,
        trust_request_chat_template=opts.trust_request_chat_template,
        max_request_body_bytes=opts.max_request_body_bytes,
        models=models,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine_loop = app.state.ctx.engine
        engine_loop.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine_loop.shutdown)

    app = FastAPI(
        title="jaxllm OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    install_error_handlers(app)
    app.state.ctx = ctx
    app.state.metrics = metrics

    # The endpoints reach the engine through `raw.app.state`, never through a closure: FastAPI keeps
    # each endpoint function in a module-level cache, so a closure over the engine would keep its
    # KV cache and weights alive after the app shut down (an app built in a test or a notebook).
    @app.get("/health")
    async def health(raw: Request) -> Response:
        engine = raw.app.state.ctx.engine
        if not engine.is_running:
            return OpenAIError(
                503, "the engine is not running", type="server_error", code="engine_dead"
            ).response()
        if not engine.accepting:
            return OpenAIError(
                503, "the server is shutting down", type="server_error", code="shutting_down"
            ).response()
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict:
        from jaxllm import __version__

        return {"version": __version__}

    @app.get("/metrics")
    async def metrics_endpoint(raw: Request) -> Response:
        return Response(raw.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(raw: Request) -> dict:
        ctx = raw.app.state.ctx
        cards = [
            ModelCard(id=n, root=ctx.model_source or None, max_model_len=ctx.max_model_len)
            for n in ctx.served_model_names
        ]
        cards += [
            ModelCard(
                id=name,
                root=lora.lora_path,
                parent=lora.base_model_name,
                max_model_len=ctx.max_model_len,
            )
            for name, lora in ctx.models.loras.items()
        ]
        return ModelList(data=cards).model_dump()

    if runtime_lora_updating():
        logger.warning(
            "%s is set: /v1/load_lora_adapter and /v1/unload_lora_adapter let any client that "
            "can reach this server make it read folders; use it only where clients are trusted",
            " / ".join(RUNTIME_LORA_ENV),
        )

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(body: LoadLoRAAdapterRequest, raw: Request) -> Response:
            ctx = raw.app.state.ctx
            await ctx.models.load(ctx.engine, body.lora_name, body.lora_path)
            return PlainTextResponse(
                f"Success: LoRA adapter '{body.lora_name}' added successfully."
            )

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, raw: Request) -> Response:
            ctx = raw.app.state.ctx
            await ctx.models.unload(ctx.engine, body.lora_name, body.lora_int_id)
            return PlainTextResponse(
                f"Success: LoRA adapter '{body.lora_name}' removed successfully."
            )

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw: Request) -> Response:
        return await create_completion(raw.app.state.ctx, body, raw)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw: Request) -> Response:
        return await create_chat_completion(raw.app.state.ctx, body, raw)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest, raw: Request) -> Response:
        return await create_tokenize(raw.app.state.ctx, body)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, raw: Request) -> Response:
        return await create_detokenize(raw.app.state.ctx, body)

    app.add_middleware(BodySizeLimitMiddleware, limit=lambda: app.state.ctx.max_request_body_bytes)
    if opts.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=opts.api_key)
    app.state.in_flight = InFlightRequests()
    app.add_middleware(InFlightMiddleware, counter=app.state.in_flight)
    return app, ctx


class Server:
    """uvicorn running `app` in a background thread (tests, notebooks); `port` is the bound one."""

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        access_log: bool = False,
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="jaxllm-uvicorn", daemon=True)
        self.host = host
        self.port: int | None = None

    def start(self, timeout: float = 60.0) -> Server:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        sock = self._server.servers[0].sockets[0]
        self.port = sock.getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)


class ServeServer(uvicorn.Server):
    """uvicorn as `jaxllm serve` runs it: the drain on SIGTERM/SIGINT and the exit on an engine
    error of the module docstring. `exit_code` is the process's status once `run()` returned.

    config.app must be an app of `build_app` (its engine and in-flight count are read)."""

    ABORT_GRACE_S = 5.0  # after the abort: how long the aborted responses may take to end
    CLOSE_GRACE_S = 2  # uvicorn's timeout_graceful_shutdown (connections left after the drain)

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        shutdown_timeout: float = 0.0,
        exit_on_engine_error: bool = True,
    ) -> None:
        super().__init__(config)
        self.shutdown_timeout = shutdown_timeout
        self.exit_on_engine_error = exit_on_engine_error
        self.exit_code = 0
        self._num_signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    @property
    def _state(self) -> Any:
        return self.config.app.state

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT (uvicorn installs this in the main thread): the first starts the
        drain, the second ends the process now."""
        self._num_signals += 1
        name = signal.Signals(sig).name
        if self._num_signals > 1:
            logger.warning("%s again: exiting now, without waiting for requests", name)
            sys.stderr.flush()
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)  # dies of the signal, as without a handler
            os._exit(128 + sig)  # (not reached)
        self.begin_shutdown(name)

    def begin_shutdown(self, why: str = "shutdown") -> None:
        """Start the drain (thread-safe; later calls do nothing)."""
        loop = self._loop
        if loop is None:  # not serving yet: nothing to drain
            self.should_exit = True
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(self._start_drain, why)

    def _start_drain(self, why: str) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain(why))

    async def _drain(self, why: str) -> None:
        engine = self._state.ctx.engine
        in_flight = self._state.in_flight
        engine.close_admission()
        loop = asyncio.get_running_loop()
        if in_flight.count:
            logger.info(
                "%s: refusing new requests; %d in flight may run for up to %g s "
                "(--shutdown-timeout); a second signal exits now",
                why,
                in_flight.count,
                self.shutdown_timeout,
            )
        else:
            logger.info("%s: no request in flight; shutting down", why)
        deadline = loop.time() + self.shutdown_timeout
        while in_flight.count and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if in_flight.count:
            logger.warning(
                "aborting the %d requests still in flight (--shutdown-timeout %g s)",
                in_flight.count,
                self.shutdown_timeout,
            )
            engine.abort_all()
            deadline = loop.time() + self.ABORT_GRACE_S
            while in_flight.count and loop.time() < deadline:
                await asyncio.sleep(0.02)
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        engine = self._state.ctx.engine
        if self.exit_on_engine_error and self.exit_code == 0 and engine.error is not None:
            logger.error(
                "the engine loop died (%r): exiting with status 1 for a supervisor to restart "
                "the server (--no-exit-on-engine-error keeps it up, answering 503)",
                engine.error,
            )
            self.exit_code = 1
            self.should_exit = True
        return await super().on_tick(counter)


def run_serve(args: Any) -> int:
    """`jaxllm serve`: parse options, load the model, serve until interrupted."""
    from jaxllm.entrypoints.cli_args import CLIError
    from jaxllm.entrypoints.openai.serve_args import resolve_serve_args

    opts = resolve_serve_args(args)
    logging.basicConfig(level=opts.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if opts.log_level.lower() != "debug":
        # JAX logs each platform it probes and lacks ("Unable to initialize backend 'tpu'") at
        # INFO, which is not news to the operator of a CPU or GPU machine.
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    mh = opts.multihost
    if mh is not None:
        from jaxllm.entrypoints.cli import start_multihost

        start_multihost(mh)
    try:
        llm = build_llm(opts)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f"cannot start the engine: {e}") from None
    if mh is not None:
        from jaxllm.parallel import multihost

        if not mh.is_leader:
            multihost.follow(llm.llm_engine)  # returns when process 0's server shuts down
            return 0
        try:
            code = _serve(llm, opts)
        finally:  # after the engine thread has stopped: no step is broadcasting any more
            multihost.stop_followers()
    else:
        code = _serve(llm, opts)
    _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    """End the process once the server has shut down (the engine thread stopped, the streams
    ended): the atexit handlers run and the output is flushed, but the interpreter's teardown of
    JAX and XLA (half a second on a small CPU model, more with large ones) is skipped, so that the
    process ends within --shutdown-timeout plus a fraction of a second."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _serve(llm: Any, opts: Any) -> int:
    try:
        app, ctx = build_app(llm, opts)
    except ValueError as e:  # a --lora-modules adapter that cannot load
        from jaxllm.entrypoints.cli_args import CLIError

        raise CLIError(f"cannot start the server: {e}") from None
    print(
        f"jaxllm serve: {', '.join(ctx.models.names)} on http://{opts.host}:{opts.port} "
        f"(max_model_len {ctx.max_model_len})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app,
        host=opts.host,
        port=opts.port,
        log_level=opts.log_level,
        access_log=opts.access_log,
        lifespan="on",
        timeout_graceful_shutdown=ServeServer.CLOSE_GRACE_S,
    )
    server = ServeServer(
        config,
        shutdown_timeout=opts.shutdown_timeout,
        exit_on_engine_error=opts.exit_on_engine_error,
    )
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        server.run()
    return server.exit_code
