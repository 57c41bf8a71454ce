"""Options of `jaxllm serve [MODEL]` (no FastAPI, no JAX: the CLI parses these cheaply).

Every engine flag of `jaxllm generate` (cli_args.add_engine_args; e.g. `--scheduling-policy
priority` lets completion and chat requests carry a `priority`) plus the server's own:
--host (default 127.0.0.1), --port (8000; 0 picks a free one), --api-key (also $JAXLLM_API_KEY),
--served-model-name NAME [NAME ...], --max-waiting-requests N (503 beyond it; default 1024; -1
disables the bound), --retry-after SECONDS, --log-level, --no-access-log, and
--config FILE.yaml with the same keys (flags given on the command line win). Multi-host:
--coordinator-address / --num-processes / --process-id (or the JAXLLM_* variables) as for
`generate`: process 0 serves, the others follow its steps until it shuts down.
"""

from __future__ import annotations

import argparse
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
    merge_config,
    resolve_multihost,
    split_kwargs,
)
from jaxllm.entrypoints.strict_parser import StrictArgumentParser

__all__ = [
    "API_KEY_ENV",
    "ServeOptions",
    "add_serve_args",
    "add_serve_subcommand",
    "resolve_serve_args",
    "serve_parser",
]

API_KEY_ENV = "JAXLLM_API_KEY"

_SERVE_DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "host": "127.0.0.1",
    "port": 8000,
    "api_key": None,
    "served_model_name": None,
    "max_waiting_requests": 1024,
    "retry_after": 1,
    "log_level": "info",
    "no_access_log": False,
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
        help="answer 503 while this many sequences wait (default 1024; -1 = no bound)",
    )
    g.add_argument("--retry-after", type=int, help="Retry-After seconds on 503 (default 1)")
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
        "/v1/chat/completions, /v1/models, /tokenize, /detokenize, /health, /metrics).",
        argument_default=argparse.SUPPRESS,
    )
    add_serve_args(sp)
    return sp


@dataclass
class ServeOptions:
    engine_kwargs: dict[str, Any]
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_names: list[str] = field(default_factory=list)
    max_waiting_requests: int | None = 1024
    retry_after: int = 1
    log_level: str = "info"
    access_log: bool = True
    multihost: MultihostOptions | None = None  # set: a multi-host run (process 0 serves)


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
    names = rest["served_model_name"]
    if isinstance(names, str):
        names = [names]
    api_key = rest["api_key"] or os.environ.get(API_KEY_ENV) or None
    multihost = resolve_multihost(
        rest["coordinator_address"], rest["num_processes"], rest["process_id"]
    )
    check_multihost_engine(multihost, engine)
    return ServeOptions(
        engine_kwargs=engine,
        host=rest["host"],
        port=port,
        api_key=api_key,
        served_model_names=list(names) if names else [str(engine.get("model", DEFAULT_MODEL))],
        max_waiting_requests=None if bound == -1 else bound,
        retry_after=rest["retry_after"],
        log_level=rest["log_level"],
        access_log=not rest["no_access_log"],
        multihost=multihost,
    )
