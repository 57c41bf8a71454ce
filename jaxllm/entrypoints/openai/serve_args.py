"""Options of `jaxllm serve [MODEL]` (no FastAPI, no JAX: the CLI parses these cheaply).

Every engine flag of `jaxllm generate` (cli_args.add_engine_args; e.g. `--scheduling-policy
priority` lets completion and chat requests carry a `priority`, and `--speculative-config JSON`
adds the `vllm:spec_decode_*` counters to /metrics) plus the server's own:
--host (default 127.0.0.1), --port (8000; 0 picks a free one), --api-key (also $JAXLLM_API_KEY),
--served-model-name NAME [NAME ...], --max-waiting-requests N (a request whose sequences would
take the waiting ones over N: 503; one with more than N on its own: 400; default 1024; -1
disables the bound), --retry-after SECONDS, --max-request-body-bytes N (413 beyond it; default
2 MiB; -1 disables it), --trust-request-chat-template (else a request's own `chat_template` is a
400, as in vLLM), --shutdown-timeout SECONDS (on SIGTERM/SIGINT, how long in-flight requests may
run before they are aborted; default 0, as vLLM's), --[no-]exit-on-engine-error (default on),
--log-level, --no-access-log, and --config FILE.yaml with the same keys (flags given on the
command line win). Structured outputs and
tools: --structured-outputs-config JSON (vLLM's; backend "auto", "guidance" or "llguidance"),
--enable-auto-tool-choice with --tool-call-parser NAME (tool_choice "auto"), --reasoning-parser
NAME (`reasoning_content`). LoRA adapters (with --enable-lora and the engine's --max-loras,
--max-lora-rank, --max-cpu-loras): --lora-modules NAME=PATH or '{"name": ..., "path": ...,
"base_model_name": ...}' [...], each adapter a model of /v1/models. Multi-host:
--coordinator-address / --num-processes / --process-id (or the JAXLLM_* variables) as for
`generate`: process 0 serves, the others follow its steps until it shuts down.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any

from jaxllm.entrypoints.cli_args import (
    DEFAULT_MODEL,
    CLIError,
    MultihostOptions,
    add_engine_args,
    add_generation_config_arg,
    add_multihost_args,
    check_multihost_engine,
    check_speculative_engine,
    merge_config,
    resolve_multihost,
    split_kwargs,
)
from jaxllm.entrypoints.openai.reasoning_parsers import REASONING_PARSERS
from jaxllm.entrypoints.openai.tool_parsers import TOOL_PARSERS
from jaxllm.entrypoints.strict_parser import StrictArgumentParser

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_MAX_REQUEST_BODY_BYTES",
    "LoRAModulePath",
    "SUPPORTED_STRUCTURED_OUTPUTS_BACKENDS",
    "ServeOptions",
    "StructuredOutputsConfig",
    "add_serve_args",
    "add_serve_subcommand",
    "parse_lora_modules",
    "parse_structured_outputs_config",
    "resolve_serve_args",
    "serve_parser",
]

API_KEY_ENV = "JAXLLM_API_KEY"
# A request's JSON is parsed on the event loop, holding it: this bounds what one parse can cost
# (the slowest body, a list of one-digit token ids, takes ~30 ms per MiB on a 2-core CPU) and
# leaves room for long prompts (a 128k-token prompt is ~0.5 MB of text or ~0.9 MB of token ids).
DEFAULT_MAX_REQUEST_BODY_BYTES = 2 * 1024 * 1024

_SERVE_DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "host": "127.0.0.1",
    "port": 8000,
    "api_key": None,
    "served_model_name": None,
    "max_waiting_requests": 1024,
    "retry_after": 1,
    "max_request_body_bytes": DEFAULT_MAX_REQUEST_BODY_BYTES,
    "trust_request_chat_template": False,
    "shutdown_timeout": 0,
    "exit_on_engine_error": True,
    "log_level": "info",
    "no_access_log": False,
    "structured_outputs_config": None,
    "enable_auto_tool_choice": False,
    "tool_call_parser": None,
    "reasoning_parser": None,
    "lora_modules": None,
    "coordinator_address": None,
    "num_processes": None,
    "process_id": None,
}


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help=f"model to serve (same forms as --model, a Hugging Face hub id included; "
        f"default {DEFAULT_MODEL})",
    )
    g = parser.add_argument_group("server")
    g.add_argument("--host", help="address to bind (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="port to bind (default 8000; 0 = any free port)")
    g.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' on /v1 routes (default: ${API_KEY_ENV} if set)",
    )
    g.add_argument(
        "--served-model-name",
        nargs="+",
        metavar="NAME",
        help="model name(s) clients use; the first is reported (default: MODEL)",
    )
    g.add_argument(
        "--max-waiting-requests",
        type=int,
        help="at most this many sequences wait: a request whose sequences (prompts x n) would "
        "go over it gets 503, one over it on its own 400 (default 1024; -1 = no bound)",
    )
    g.add_argument("--retry-after", type=int, help="Retry-After seconds on 503 (default 1)")
    g.add_argument(
        "--max-request-body-bytes",
        type=int,
        metavar="N",
        help=f"answer 413 to request bodies over N bytes, before parsing them (default "
        f"{DEFAULT_MAX_REQUEST_BODY_BYTES} = 2 MiB; -1 = no limit)",
    )
    g.add_argument(
        "--trust-request-chat-template",
        action="store_true",
        help="accept a chat template sent in a request (chat_template, or chat_template_kwargs' "
        "chat_template); refused with a 400 otherwise, as vLLM does. Templates render in a "
        "sandboxed Jinja environment either way",
    )
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, stop admitting (503; /health 503) and let in-flight requests "
        "run this long, then abort them (finish_reason 'abort'); a second signal exits at once "
        "(default 0: abort at once, as vLLM)",
    )
    g.add_argument(
        "--exit-on-engine-error",
        action=argparse.BooleanOptionalAction,
        help="exit (status 1) when the engine loop dies, so a supervisor restarts the server "
        "(default on, as vLLM); --no-exit-on-engine-error keeps serving, answering 503",
    )
    g.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level (default info)",
    )
    g.add_argument("--no-access-log", action="store_true", help="do not log each HTTP request")
    g.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file of these options (flags given here override it)",
    )
    t = parser.add_argument_group("structured outputs, tool calling and reasoning")
    t.add_argument(
        "--structured-outputs-config",
        metavar="JSON",
        help='structured outputs settings as JSON (vLLM\'s), e.g. \'{"backend": "guidance"}\': '
        f"backend one of {', '.join(SUPPORTED_STRUCTURED_OUTPUTS_BACKENDS)} (all llguidance; "
        'default "auto"), disable_any_whitespace (compact JSON unless a request says), '
        "disable_fallback",
    )
    t.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='let the model decide to call tools (tool_choice "auto", the default when a request '
        "has tools); needs --tool-call-parser",
    )
    t.add_argument(
        "--tool-call-parser",
        choices=sorted(TOOL_PARSERS),
        metavar="NAME",
        help='how tool calls are written in the model\'s output, for tool_choice "auto": '
        + ", ".join(sorted(TOOL_PARSERS)),
    )
    t.add_argument(
        "--reasoning-parser",
        choices=sorted(REASONING_PARSERS),
        metavar="NAME",
        help="split the model's thinking (<think>...</think>) into reasoning_content: "
        + ", ".join(sorted(REASONING_PARSERS)),
    )
    lo = parser.add_argument_group("LoRA adapters (with --enable-lora; docs/lora.md)")
    lo.add_argument(
        "--lora-modules",
        nargs="+",
        metavar="NAME=PATH",
        help="PEFT LoRA adapters to serve, each a model of /v1/models that requests choose with "
        'model=NAME: NAME=PATH, or vLLM\'s JSON \'{"name": NAME, "path": PATH, '
        '"base_model_name": BASE}\'. Runtime loading: /v1/load_lora_adapter and '
        "/v1/unload_lora_adapter, when JAXLLM_ALLOW_RUNTIME_LORA_UPDATING (or "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING) is true",
    )
    add_engine_args(parser)
    add_generation_config_arg(parser.add_argument_group("sampling defaults"))
    add_multihost_args(parser, "runs the HTTP server and the scheduler")


def serve_parser(prog: str = "jaxllm serve") -> argparse.ArgumentParser:
    """A standalone parser of `serve`'s options (unset options stay absent from the namespace)."""
    parser = StrictArgumentParser(prog=prog, argument_default=argparse.SUPPRESS)
    add_serve_args(parser)
    return parser


def add_serve_subcommand(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `serve` to the `jaxllm` parser built by cli_args.build_parser()."""
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sp = subs.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server",
        description="Serve MODEL over an OpenAI-compatible HTTP API (/v1/completions, "
        "/v1/chat/completions, /v1/models, /tokenize, /detokenize, /health, /metrics; with "
        "JAXLLM_ALLOW_RUNTIME_LORA_UPDATING=true also /v1/load_lora_adapter and "
        "/v1/unload_lora_adapter).",
        argument_default=argparse.SUPPRESS,
    )
    add_serve_args(sp)
    return sp


# vLLM's backend names that mean llguidance (the only grammar engine jaxllm has)
SUPPORTED_STRUCTURED_OUTPUTS_BACKENDS = ("auto", "guidance", "llguidance")
_STRUCTURED_OUTPUTS_KEYS = ("backend", "disable_any_whitespace", "disable_fallback")


@dataclass(frozen=True)
class StructuredOutputsConfig:
    """`--structured-outputs-config` (vLLM's JSON): `backend` ("auto", "guidance" or
    "llguidance": all llguidance), `disable_any_whitespace` (the default for requests that do not
    say: compact JSON) and `disable_fallback` (accepted; there is no other backend to fall back
    to)."""

    backend: str = "auto"
    disable_any_whitespace: bool = False
    disable_fallback: bool = False


def parse_structured_outputs_config(value: Any) -> StructuredOutputsConfig:
    """From the flag's JSON text (or a parsed dict); ValueError naming what is wrong (an
    unsupported backend names the supported ones)."""
    if value is None:
        return StructuredOutputsConfig()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"--structured-outputs-config is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError("--structured-outputs-config must be a JSON object")
    unknown = sorted(set(value) - set(_STRUCTURED_OUTPUTS_KEYS))
    if unknown:
        raise ValueError(
            f"--structured-outputs-config has unsupported keys {unknown} "
            f"(supported: {', '.join(_STRUCTURED_OUTPUTS_KEYS)})"
        )
    backend = value.get("backend", "auto")
    if backend not in SUPPORTED_STRUCTURED_OUTPUTS_BACKENDS:
        raise ValueError(
            f"structured outputs backend {backend!r} is not supported: jaxllm compiles grammars "
            f"with llguidance; use one of {', '.join(SUPPORTED_STRUCTURED_OUTPUTS_BACKENDS)}"
        )
    flags = {}
    for key in ("disable_any_whitespace", "disable_fallback"):
        flag = value.get(key, False)
        if not isinstance(flag, bool):
            raise ValueError(f"--structured-outputs-config: {key} must be true or false")
        flags[key] = flag
    return StructuredOutputsConfig(backend=backend, **flags)


@dataclass(frozen=True)
class LoRAModulePath:
    """One `--lora-modules` adapter: its served name, its PEFT folder and the base model it is
    reported under in /v1/models (None: the first served model name)."""

    name: str
    path: str
    base_model_name: str | None = None


def _lora_module(value: Any) -> LoRAModulePath:
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"--lora-modules: {value!r} is not valid JSON: {e}") from None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"name", "path", "base_model_name"})
        if unknown:
            raise ValueError(
                f"--lora-modules: unsupported keys {unknown} (supported: name, path, "
                "base_model_name)"
            )
        name, path, base = value.get("name"), value.get("path"), value.get("base_model_name")
        if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
            raise ValueError(f"--lora-modules: {json.dumps(value)} needs a 'name' and a 'path'")
        if base is not None and not isinstance(base, str):
            raise ValueError("--lora-modules: base_model_name must be a string")
        return LoRAModulePath(name, path, base)
    if not isinstance(value, str):
        raise ValueError(f"--lora-modules: expected NAME=PATH or a JSON object, got {value!r}")
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora-modules: expected NAME=PATH or a JSON object, got {value!r}")
    return LoRAModulePath(name, path)


def parse_lora_modules(values: Any, served_names: list[str]) -> list[LoRAModulePath]:
    """`--lora-modules` (NAME=PATH strings, JSON objects or, from a config file, mappings);
    ValueError for a malformed one or a name given twice or taken by the base model."""
    if values is None:
        return []
    if isinstance(values, str | dict):
        values = [values]
    modules = [_lora_module(v) for v in values]
    seen: set[str] = set()
    for m in modules:
        if m.name in served_names:
            raise ValueError(
                f"--lora-modules: {m.name!r} is the base model's served name; name the adapter "
                "otherwise"
            )
        if m.name in seen:
            raise ValueError(f"--lora-modules: the name {m.name!r} is given twice")
        seen.add(m.name)
    return modules


@dataclass
class ServeOptions:
    engine_kwargs: dict[str, Any]
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_names: list[str] = field(default_factory=list)
    max_waiting_requests: int | None = 1024
    retry_after: int = 1
    max_request_body_bytes: int | None = DEFAULT_MAX_REQUEST_BODY_BYTES  # None: no limit
    trust_request_chat_template: bool = False
    shutdown_timeout: float = 0.0
    exit_on_engine_error: bool = True
    log_level: str = "info"
    access_log: bool = True
    multihost: MultihostOptions | None = None  # set: a multi-host run (process 0 serves)
    structured_outputs_config: StructuredOutputsConfig = field(
        default_factory=StructuredOutputsConfig
    )
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    lora_modules: list[LoRAModulePath] = field(default_factory=list)


def resolve_serve_args(args: argparse.Namespace) -> ServeOptions:
    """Defaults < config file < flags; raises CLIError on bad values."""
    values = dict(_SERVE_DEFAULTS)
    values.update(merge_config(args, serve_parser()))
    engine, sampling, rest = split_kwargs(values)
    if sampling:  # cannot happen with serve's parser; guards a future change
        raise CLIError(f"serve takes no sampling options: {', '.join(sorted(sampling))}")
    port = rest["port"]
    if not 0 <= port <= 65535:
        raise CLIError(f"--port must be in [0, 65535], got {port}")
    bound = rest["max_waiting_requests"]
    if bound is not None and bound < -1:
        raise CLIError(f"--max-waiting-requests must be >= 0, or -1 for no bound; got {bound}")
    if rest["retry_after"] < 1:
        raise CLIError(f"--retry-after must be at least 1 second, got {rest['retry_after']}")
    body_limit = rest["max_request_body_bytes"]
    if body_limit is not None and body_limit < 1 and body_limit != -1:
        raise CLIError(
            f"--max-request-body-bytes must be at least 1, or -1 for no limit; got {body_limit}"
        )
    shutdown_timeout = float(rest["shutdown_timeout"])
    if not shutdown_timeout >= 0:  # NaN too
        raise CLIError(f"--shutdown-timeout must be >= 0 seconds, got {rest['shutdown_timeout']}")
    names = rest["served_model_name"]
    if isinstance(names, str):
        names = [names]
    api_key = rest["api_key"] or os.environ.get(API_KEY_ENV) or None
    multihost = resolve_multihost(
        rest["coordinator_address"], rest["num_processes"], rest["process_id"]
    )
    check_multihost_engine(multihost, engine)
    check_speculative_engine(engine)
    try:
        structured = parse_structured_outputs_config(rest["structured_outputs_config"])
    except ValueError as e:
        raise CLIError(str(e)) from None
    if rest["enable_auto_tool_choice"] and not rest["tool_call_parser"]:
        raise CLIError(
            "--enable-auto-tool-choice needs --tool-call-parser NAME (one of "
            f"{', '.join(sorted(TOOL_PARSERS))})"
        )
    served = list(names) if names else [str(engine.get("model", DEFAULT_MODEL))]
    try:
        lora_modules = parse_lora_modules(rest["lora_modules"], served)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if lora_modules and not engine.get("enable_lora"):
        raise CLIError("--lora-modules needs --enable-lora")
    if engine.get("enable_lora") and (engine.get("data_parallel_size") or 1) > 1:
        raise CLIError("the server does not serve LoRA adapters with --data-parallel-size > 1 yet")
    return ServeOptions(
        engine_kwargs=engine,
        host=rest["host"],
        port=port,
        api_key=api_key,
        served_model_names=served,
        max_waiting_requests=None if bound == -1 else bound,
        retry_after=rest["retry_after"],
        max_request_body_bytes=None if body_limit in (None, -1) else body_limit,
        trust_request_chat_template=bool(rest["trust_request_chat_template"]),
        shutdown_timeout=shutdown_timeout,
        exit_on_engine_error=bool(rest["exit_on_engine_error"]),
        log_level=rest["log_level"],
        access_log=not rest["no_access_log"],
        multihost=multihost,
        structured_outputs_config=structured,
        enable_auto_tool_choice=rest["enable_auto_tool_choice"],
        tool_call_parser=rest["tool_call_parser"],
        reasoning_parser=rest["reasoning_parser"],
        lora_modules=lora_modules,
    )
