"""Command-line arguments shared by the `jaxllm` subcommands (no JAX, no model).

Three groups of options, each added by one function so later subcommands (`serve`, `bench`) reuse
them:

* engine options (`add_engine_args`) -> keyword arguments of `jaxllm.LLM` (vLLM names);
* sampling options (`add_sampling_args`) -> keyword arguments of `jaxllm.SamplingParams`;
* the subcommand's own options (e.g. `generate`'s `--prompts-file`, `--output`).

Seeds: `--seed` is the engine seed (`LLM(seed=...)`, as in vLLM's CLI); `--sampling-seed` is the
per-request seed (`SamplingParams(seed=...)`).

Multi-host (`generate`, `serve`): `--coordinator-address HOST:PORT`, `--num-processes N`,
`--process-id I`, each falling back to JAXLLM_COORDINATOR_ADDRESS / JAXLLM_NUM_PROCESSES /
JAXLLM_PROCESS_ID (the variables `jaxllm.parallel.multihost.initialize` reads);
`resolve_multihost` checks them.

`--config FILE.yaml` holds the same options as a flat mapping: keys are the long flag names with
dashes or underscores (`max-model-len` or `max_model_len`; `tp` works too), values are YAML
scalars or lists (`stop: ["\\n", "###"]`), or for a flag whose value is a JSON object
(`--speculative-config`) a mapping or its JSON text. Precedence: flags given on the command line >
the config file > built-in defaults (the `LLM` / `SamplingParams` defaults; only options that were
set are passed on). Unknown keys and badly typed values raise `CLIError` naming them.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jaxllm.config import KV_CACHE_DTYPES
from jaxllm.entrypoints.strict_parser import StrictArgumentParser

__all__ = [
    "CLIError",
    "DEFAULT_MODEL",
    "ENGINE_ARGS",
    "SAMPLING_ARGS",
    "GenerateOptions",
    "MultihostOptions",
    "add_engine_args",
    "add_sampling_args",
    "add_generate_args",
    "add_generation_config_arg",
    "add_convert_args",
    "build_parser",
    "generate_parser",
    "load_config_file",
    "merge_config",
    "split_kwargs",
    "resolve_generate_args",
    "resolve_multihost",
    "check_multihost_engine",
    "add_multihost_args",
    "check_speculative_engine",
    "JSONObjectArg",
]

DEFAULT_MODEL = "smollm2-135m"
# jaxllm.model_loader.builtin_models.BUILTIN_NAMES, spelled out: importing the loaders imports JAX
# (tests/models/test_builtin_models.py checks the two agree)
BUILTIN_MODEL_NAMES = ("smollm2-135m", "gemma3-270m")

# argparse dest -> LLM keyword (vLLM names).
ENGINE_ARGS = {
    "model": "model",
    "revision": "revision",
    "dtype": "dtype",
    "quantization": "quantization",
    "max_model_len": "max_model_len",
    "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "block_size": "block_size",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "num_gpu_blocks": "num_gpu_blocks_override",
    "enable_prefix_caching": "enable_prefix_caching",
    "preemption_mode": "preemption_mode",
    "swap_space": "swap_space",
    "kv_cache_dtype": "kv_cache_dtype",
    "scheduling_policy": "scheduling_policy",
    "async_scheduling": "async_scheduling",
    "tensor_parallel_size": "tensor_parallel_size",
    "data_parallel_size": "data_parallel_size",
    "enable_expert_parallel": "enable_expert_parallel",
    "seed": "seed",
    "max_logprobs": "max_logprobs",
    "attention_backend": "attention_backend",
    "precompile": "precompile",
    "generation_config": "generation_config",
    "speculative_config": "speculative_config",
    "enable_lora": "enable_lora",
    "max_loras": "max_loras",
    "max_lora_rank": "max_lora_rank",
    "max_cpu_loras": "max_cpu_loras",
}

# argparse dest -> SamplingParams keyword.
SAMPLING_ARGS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "max_tokens": "max_tokens",
    "min_tokens": "min_tokens",
    "n": "n",
    "sampling_seed": "seed",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "ignore_eos": "ignore_eos",
    "logprobs": "logprobs",
    "prompt_logprobs": "prompt_logprobs",
}

# Defaults of options that are not passed through to LLM / SamplingParams.
_GENERATE_DEFAULTS = {
    "model": DEFAULT_MODEL,
    "prompts": [],
    "prompts_file": None,
    "output": None,
    "chat": False,
    "no_progress": False,
    "json": False,
    "beam_width": None,
    "length_penalty": None,
    "coordinator_address": None,
    "num_processes": None,
    "process_id": None,
}

# Multi-host environment variables (the same names as jaxllm.parallel.multihost, which imports jax).
COORDINATOR_ENV = "JAXLLM_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAXLLM_NUM_PROCESSES"
PROCESS_ID_ENV = "JAXLLM_PROCESS_ID"


class CLIError(ValueError):
    """Bad command-line input; the CLI prints it on stderr and exits with status 2."""


class JSONObjectArg:
    """The argparse `type` of a flag whose value is a JSON object (`--speculative-config`): its
    JSON text, or in a config file the mapping itself, checked by `check` (which raises
    ValueError) before any model loads; the value is the dict. argparse's message names the flag
    (a config file's, the key)."""

    __name__ = "JSON object"  # how argparse names the type in its own messages

    def __init__(self, check: Callable[[dict], object]) -> None:
        self.check = check

    def __call__(self, value: str | dict) -> dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"must be a JSON object, got {type(value).__name__}")
        try:
            self.check(value)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return dict(value)


def _check_speculative_config(value: dict) -> object:
    # host side only (no JAX): the CLI checks the value before the model loads
    from jaxllm.spec_decode.config import SpeculativeConfig

    return SpeculativeConfig.from_value(value)


SPECULATIVE_CONFIG_ARG = JSONObjectArg(_check_speculative_config)


def _int_list(text: str) -> list[int]:
    """'2,3' -> [2, 3] (for --stop-token-ids)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


# ---------------------------------------------------------------------------------------- groups


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Engine options; each maps to an `LLM(...)` keyword (see ENGINE_ARGS)."""
    g = parser.add_argument_group("engine")
    g.add_argument(
        "--model",
        help=f"model: a built-in name ({', '.join(BUILTIN_MODEL_NAMES)}), an HF folder, a .gguf "
        f"file, a converted jaxllm folder, dummy:NAME, or a Hugging Face hub id (org/name: the "
        f"local HF cache first, else a download unless HF_HUB_OFFLINE=1) "
        f"(default: {DEFAULT_MODEL})",
    )
    g.add_argument(
        "--revision",
        help="branch, tag or commit hash of a Hugging Face hub model (default: main)",
    )
    g.add_argument("--dtype", help="weights/compute dtype: auto, float32, bfloat16 (default: auto)")
    g.add_argument(
        "--quantization",
        "-q",
        help="weight quantization: fp8, int8 (the decoder's linear weights quantized at load), "
        "gguf (a GGUF file's quantized tensors kept in their blocks); default: the checkpoint's "
        "(GGUF files: gguf)",
    )
    g.add_argument("--max-model-len", type=int, help="longest prompt + output, in tokens")
    g.add_argument("--max-num-seqs", type=int, help="most sequences in one step")
    g.add_argument("--max-num-batched-tokens", type=int, help="token budget of one step")
    g.add_argument("--block-size", type=int, help="tokens per KV-cache block")
    g.add_argument(
        "--gpu-memory-utilization",
        type=float,
        help="fraction of device memory the engine may use (0, 1]",
    )
    g.add_argument(
        "--num-gpu-blocks",
        type=int,
        help="number of KV-cache blocks, overriding the memory-based size "
        "(LLM's num_gpu_blocks_override)",
    )
    g.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        help="reuse KV blocks of shared prompt prefixes",
    )
    g.add_argument(
        "--enable-lora",
        action=argparse.BooleanOptionalAction,
        help="serve PEFT LoRA adapters (docs/lora.md)",
    )
    g.add_argument("--max-loras", type=int, help="distinct LoRA adapters in one step (default 1)")
    g.add_argument("--max-lora-rank", type=int, help="largest LoRA rank accepted (default 16)")
    g.add_argument(
        "--max-cpu-loras",
        type=int,
        help="LoRA adapters kept loaded on the host (default: max-loras)",
    )
    g.add_argument(
        "--preemption-mode",
        choices=("recompute", "swap"),
        help="when KV blocks run out: recompute the preempted request later, or swap "
        "its KV to host memory (default: recompute)",
    )
    g.add_argument(
        "--swap-space", type=float, help="GiB of host memory for swapped-out KV blocks (default 4)"
    )
    g.add_argument(
        "--kv-cache-dtype",
        choices=tuple(KV_CACHE_DTYPES),
        help="KV cache storage: auto (the model's dtype), a float dtype, or fp8 / fp8_e4m3 "
        "(float8 e4m3 with per-tensor scales: twice the KV blocks of bfloat16 in the same "
        "memory; default: auto)",
    )
    g.add_argument(
        "--scheduling-policy",
        choices=("fcfs", "priority"),
        help="fcfs, or priority (lower request priority first; default: fcfs)",
    )
    g.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        help="schedule and build the next step while the device runs the current one "
        "(same outputs; hides the host's per-step time; default: on with the GPU attention "
        "backends pallas and cuda, off on the CPU)",
    )
    g.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        help="devices to shard the model over (heads, MLP and vocabulary split)",
    )
    g.add_argument(
        "--data-parallel-size",
        "-dp",
        type=int,
        help="engine replicas on disjoint groups of -tp devices; requests go to the "
        "least loaded replica",
    )
    g.add_argument(
        "--enable-expert-parallel",
        action=argparse.BooleanOptionalAction,
        help="mixture-of-experts models: split whole experts over the -tp devices instead of "
        "each expert's width (default: off)",
    )
    g.add_argument("--seed", type=int, help="engine random seed (LLM(seed=...))")
    g.add_argument("--max-logprobs", type=int, help="most logprobs a request may ask for")
    g.add_argument(
        "--attention-backend",
        help="attention implementation: reference, cpu, pallas or cuda (default: pallas on "
        "NVIDIA GPUs, cpu on the CPU)",
    )
    g.add_argument(
        "--precompile",
        action=argparse.BooleanOptionalAction,
        help="compile every padded step shape at start-up, in parallel threads (greedy and "
        "random sampling), instead of on first use; worth it on GPUs (default: off)",
    )
    g.add_argument(
        "--speculative-config",
        type=SPECULATIVE_CONFIG_ARG,
        metavar="JSON",
        help='speculative decoding as JSON (vLLM\'s keys), e.g. \'{"method": "ngram", '
        '"num_speculative_tokens": 4}\' (prompt_lookup_min/max: the n-gram lengths, default 1 '
        'and 5) or \'{"method": "draft_model", "model": "...", "num_speculative_tokens": 4}\'; '
        "outputs stay those without it; the engine then schedules synchronously "
        "(default: off)",
    )


def add_sampling_args(parser: argparse.ArgumentParser) -> Any:
    """Sampling options; each maps to a `SamplingParams(...)` keyword (see SAMPLING_ARGS). Returns
    the argument group."""
    g = parser.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, help="0 means greedy")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 or -1: all)")
    g.add_argument("--min-p", type=float, help="drop tokens below min_p * p(most likely)")
    g.add_argument(
        "--max-tokens", type=int, help="most tokens to generate per sequence (default 16)"
    )
    g.add_argument("--min-tokens", type=int, help="generate at least this many tokens")
    g.add_argument("--n", type=int, help="completions per prompt")
    g.add_argument("--sampling-seed", type=int, help="per-request seed (SamplingParams(seed=...))")
    g.add_argument(
        "--stop",
        action="append",
        metavar="STRING",
        help="stop string (repeatable; in a shell, $'\\n' gives a newline)",
    )
    g.add_argument(
        "--stop-token-ids",
        type=_int_list,
        action="extend",
        metavar="ID[,ID...]",
        help="token ids that end a sequence, comma-separated (repeatable)",
    )
    g.add_argument("--presence-penalty", type=float, help="in [-2, 2]")
    g.add_argument("--frequency-penalty", type=float, help="in [-2, 2]")
    g.add_argument("--repetition-penalty", type=float, help="> 0; 1 means none")
    g.add_argument(
        "--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token"
    )
    g.add_argument("--logprobs", type=int, help="return this many top logprobs per generated token")
    g.add_argument(
        "--prompt-logprobs", type=int, help="return this many top logprobs per prompt token"
    )
    return g


def add_generation_config_arg(group: Any) -> None:
    """`--generation-config auto|vllm` (`LLM(generation_config=...)`), for generate and serve."""
    group.add_argument(
        "--generation-config",
        choices=("auto", "vllm"),
        help="auto (default): the sampling settings of the model's generation_config "
        "(temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens) are the "
        "defaults of every request, which its own settings override; vllm: ignore them "
        "(SamplingParams' defaults: temperature 1, max_tokens 16)",
    )


def add_generate_args(parser: argparse.ArgumentParser) -> None:
    """All options of `jaxllm generate`."""
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts to complete")
    io = parser.add_argument_group("input/output")
    io.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="prompts: a text file (one prompt a line) or .jsonl with "
        '{"prompt": ...} or {"messages": [...]} per line',
    )
    io.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="write one JSON record per prompt to FILE (JSONL; see `jaxllm generate` in the "
        "docs) instead of printing the generated text",
    )
    io.add_argument(
        "--json",
        action="store_true",
        help="print the JSON records (JSONL) on stdout instead of the generated text",
    )
    io.add_argument(
        "--chat",
        action="store_true",
        help="send each plain prompt as one user message through the chat template",
    )
    io.add_argument("--no-progress", action="store_true", help="no progress bar")
    io.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file of these options (flags given here override it)",
    )
    add_engine_args(parser)
    add_generation_config_arg(add_sampling_args(parser))
    bs = parser.add_argument_group("beam search")
    bs.add_argument(
        "--beam-width",
        type=int,
        help="run beam search with this many beams (LLM.beam_search) instead of "
        "sampling; each record's outputs are the beams, best first",
    )
    bs.add_argument(
        "--length-penalty",
        type=float,
        help="beam search: rank finished beams by cum_logprob / length**penalty (default 1)",
    )
    add_multihost_args(parser)


def add_multihost_args(
    parser: argparse.ArgumentParser,
    leader_role: str = "schedules the prompts and writes the output",
) -> None:
    """`--coordinator-address`, `--num-processes`, `--process-id` (jax.distributed)."""
    mh = parser.add_argument_group(
        "multi-host",
        "one process per host over jax.distributed, every process running this same command "
        f"(only --process-id differs); the mesh (-tp) spans all processes' devices. Process 0 "
        f"{leader_role}; the others replay its steps and exit 0 when it is done. Each flag "
        "falls back to an environment variable.",
    )
    mh.add_argument(
        "--coordinator-address",
        metavar="HOST:PORT",
        help=f"address of process 0's coordinator, reachable from every host (${COORDINATOR_ENV})",
    )
    mh.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help=f"number of processes, one per host (${NUM_PROCESSES_ENV})",
    )
    mh.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help=f"this process's rank in [0, N); 0 leads (${PROCESS_ID_ENV})",
    )


def add_convert_args(parser: argparse.ArgumentParser) -> None:
    """Options of `jaxllm convert MODEL OUT_DIR`."""
    parser.add_argument(
        "model", help="model to convert (HF folder, .gguf file, built-in name or hub id)"
    )
    parser.add_argument(
        "--revision", help="branch, tag or commit hash of a Hugging Face hub model (default: main)"
    )
    parser.add_argument("out_dir", help="folder to write the converted checkpoint to")
    parser.add_argument(
        "--dtype", default="auto", help="dtype of the saved weights (default: auto)"
    )


def generate_parser(prog: str = "jaxllm generate") -> argparse.ArgumentParser:
    """A standalone parser of `generate`'s options (unset options stay out of the namespace)."""
    parser = StrictArgumentParser(prog=prog, argument_default=argparse.SUPPRESS)
    add_generate_args(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = StrictArgumentParser(
        prog="jaxllm", description="jaxllm: LLM inference on JAX/XLA with vLLM's API."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    gen = sub.add_parser(
        "generate",
        help="complete prompts, write JSONL",
        description="Complete prompts and write one JSON object per prompt.",
        argument_default=argparse.SUPPRESS,
    )
    add_generate_args(gen)
    conv = sub.add_parser("convert", help="convert a model to a jaxllm checkpoint folder")
    add_convert_args(conv)
    return parser


# ---------------------------------------------------------------------------------------- config


def _config_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config key (underscore form) -> the argparse action it sets."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse offers no public listing of its actions
        if action.dest in ("help", "config"):
            continue
        keys[action.dest] = action
        for opt in action.option_strings:
            name = opt.lstrip("-").replace("-", "_")
            if not name.startswith("no_") or name == action.dest:
                keys.setdefault(name, action)
    return keys


def _coerce(action: argparse.Action, value: Any, where: str) -> Any:
    """Check/convert one config value the way argparse would convert the flag's text."""
    is_flag = action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction)
    if is_flag:
        if not isinstance(value, bool):
            raise CLIError(f"{where} must be true or false, got {value!r}")
        return value

    def one(item: Any) -> Any:
        if isinstance(item, dict) and isinstance(action.type, JSONObjectArg):
            try:
                return action.type(item)
            except argparse.ArgumentTypeError as e:
                raise CLIError(f"{where}: {e}") from None
        if isinstance(item, (dict, list, bool)):
            raise CLIError(f"{where} has a bad value {item!r}")
        text = str(item)
        if action.type is None:
            return text
        try:
            return action.type(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise CLIError(f"{where}: invalid value {item!r} ({e})") from None

    many = isinstance(action, (argparse._AppendAction, argparse._ExtendAction)) or action.nargs in (
        "*",
        "+",
    )
    if not many:
        return one(value)
    items = value if isinstance(value, list) else [value]
    out: list[Any] = []
    for item in items:
        converted = one(item)
        if isinstance(action, argparse._ExtendAction) and isinstance(converted, list):
            out.extend(converted)
        else:
            out.append(converted)
    return out


def _yaml_load_strict(stream: Any) -> Any:
    """yaml.safe_load that rejects a key given twice in one mapping (PyYAML keeps the last)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(
        loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False
    ) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return yaml.load(stream, Loader=StrictLoader)


def load_config_file(path: str, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """Read a YAML config into {argparse dest: value}; unknown keys -> CLIError naming them."""
    import yaml

    parser = parser or generate_parser()
    if not os.path.isfile(path):
        raise CLIError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = _yaml_load_strict(f)
    except yaml.YAMLError as e:
        raise CLIError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CLIError(
            f"config file {path} must hold a mapping of option names to values, "
            f"got {type(data).__name__}"
        )
    actions = _config_actions(parser)
    unknown = sorted(str(k) for k in data if str(k).replace("-", "_") not in actions)
    if unknown:
        raise CLIError(
            f"unknown key(s) in config file {path}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(a.dest for a in set(actions.values())))})"
        )
    values: dict[str, Any] = {}
    for key, value in data.items():
        action = actions[str(key).replace("-", "_")]
        if value is None:
            continue  # `key: null` leaves the default
        if action.dest in values:
            raise CLIError(f"config file {path} sets {action.dest!r} twice (key {key!r})")
        values[action.dest] = _coerce(action, value, f"config file {path}: key {key!r}")
    return values


def merge_config(
    args: argparse.Namespace, parser: argparse.ArgumentParser | None = None
) -> dict[str, Any]:
    """{dest: value}: the config file's values (if --config), overridden by flags given."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    config_path = getattr(args, "config", None)
    merged = load_config_file(config_path, parser) if config_path else {}
    merged.update(given)
    return merged


def split_kwargs(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split {dest: value} into (LLM kwargs, SamplingParams kwargs, the rest), renaming keys."""
    engine = {ENGINE_ARGS[k]: v for k, v in values.items() if k in ENGINE_ARGS}
    sampling = {SAMPLING_ARGS[k]: v for k, v in values.items() if k in SAMPLING_ARGS}
    rest = {k: v for k, v in values.items() if k not in ENGINE_ARGS and k not in SAMPLING_ARGS}
    return engine, sampling, rest


@dataclass
class GenerateOptions:
    """Everything `jaxllm generate` needs, after merging the config file and the flags."""

    engine_kwargs: dict[str, Any]
    sampling_kwargs: dict[str, Any]
    prompts: list[str] = field(default_factory=list)
    prompts_file: str | None = None
    output: str | None = None  # None or "-": stdout
    json_output: bool = False  # JSONL records on stdout instead of the generated text
    chat: bool = False
    progress: bool = True
    beam_width: int | None = None  # set: beam search instead of sampling
    length_penalty: float | None = None
    multihost: MultihostOptions | None = None  # set: a multi-host run


@dataclass(frozen=True)
class MultihostOptions:
    """A checked multi-host setting: `jax.distributed.initialize(address, num_processes, id)`."""

    coordinator_address: str  # HOST:PORT
    num_processes: int
    process_id: int  # in [0, num_processes); 0 leads

    @property
    def is_leader(self) -> bool:
        return self.process_id == 0


def _from_flag_or_env(
    value: Any, flag: str, env_var: str, environ: Mapping[str, str], as_int: bool
) -> tuple[Any, str]:
    """(value, where it came from): the flag's value, else the environment variable's."""
    if value is not None:
        return value, flag
    text = environ.get(env_var, "").strip()
    if not text:
        return None, flag
    if not as_int:
        return text, env_var
    try:
        return int(text), env_var
    except ValueError:
        raise CLIError(f"{env_var} must be an integer, got {text!r}") from None


def _check_address(address: str, where: str) -> None:
    """HOST:PORT (an IPv6 host in brackets: [::1]:1234), port in 1..65535."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port or host in ("[", "[]"):
        raise CLIError(f"{where} must be HOST:PORT, got {address!r} (no port)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise CLIError(f"{where} must be HOST:PORT with a port in 1..65535, got {address!r}")


def resolve_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> MultihostOptions | None:
    """The multi-host setting from the flags, else the JAXLLM_* variables; None when neither
    names a coordinator nor a process count or id. A partial or inconsistent setting raises
    CLIError naming the flag (or variable)."""
    env = os.environ if environ is None else environ
    address, a_src = _from_flag_or_env(
        coordinator_address, "--coordinator-address", COORDINATOR_ENV, env, False
    )
    n, n_src = _from_flag_or_env(num_processes, "--num-processes", NUM_PROCESSES_ENV, env, True)
    pid, p_src = _from_flag_or_env(process_id, "--process-id", PROCESS_ID_ENV, env, True)
    if address is None:
        for value, src in ((n, n_src), (pid, p_src)):
            if value is not None:
                raise CLIError(
                    f"{src} needs --coordinator-address HOST:PORT (or ${COORDINATOR_ENV})"
                )
        return None
    _check_address(address, a_src)
    if n is None:
        raise CLIError(f"{a_src} needs --num-processes N (or ${NUM_PROCESSES_ENV})")
    if pid is None:
        raise CLIError(f"{a_src} needs --process-id I (or ${PROCESS_ID_ENV})")
    if n < 1:
        raise CLIError(f"{n_src} must be at least 1, got {n}")
    if not 0 <= pid < n:
        raise CLIError(f"{p_src} {pid} is outside [0, {n}) ({n_src} {n})")
    return MultihostOptions(address, n, pid)


def check_multihost_engine(multihost: MultihostOptions | None, engine: Mapping[str, Any]) -> None:
    if multihost is not None and (engine.get("data_parallel_size") or 1) != 1:
        raise CLIError(
            "--data-parallel-size above 1 does not combine with a multi-host run "
            "(--coordinator-address): use -tp over all processes' devices"
        )


def check_speculative_engine(engine: Mapping[str, Any]) -> None:
    """Speculative decoding runs with synchronous scheduling only: refuse both flags together
    before the model loads (the engine would refuse them after)."""
    if engine.get("speculative_config") is not None and engine.get("async_scheduling"):
        raise CLIError(
            "--speculative-config does not combine with --async-scheduling: the proposer needs "
            "each step's tokens on the host before the next step is scheduled"
        )


def resolve_generate_args(args: argparse.Namespace) -> GenerateOptions:
    """Merge defaults < config file < command-line flags into a GenerateOptions."""
    values = dict(_GENERATE_DEFAULTS)
    values.update(merge_config(args, generate_parser()))
    engine, sampling, rest = split_kwargs(values)
    multihost = resolve_multihost(
        rest["coordinator_address"], rest["num_processes"], rest["process_id"]
    )
    check_multihost_engine(multihost, engine)
    check_speculative_engine(engine)
    return GenerateOptions(
        engine_kwargs=engine,
        sampling_kwargs=sampling,
        prompts=list(rest["prompts"]),
        prompts_file=rest["prompts_file"],
        output=rest["output"],
        json_output=bool(rest["json"]),
        chat=bool(rest["chat"]),
        progress=not rest["no_progress"],
        beam_width=rest["beam_width"],
        length_penalty=rest["length_penalty"],
        multihost=multihost,
    )
