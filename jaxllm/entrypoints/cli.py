"""The `jaxllm` command line: `jaxllm generate ...`, `jaxllm convert MODEL OUT_DIR`, `jaxllm serve`,
`jaxllm bench throughput|latency|serve ...` (jaxllm.benchmarks) and `jaxllm sweep FILE.yaml`
(jaxllm.sweep).

`generate` completes prompts (PROMPT arguments and/or `--prompts-file`) and prints each
completion's generated text, in input order, a blank line between completions. With `--json` it
prints, and with `--output FILE` it writes, one JSON object per prompt instead (JSONL):

    {"index": 0, "prompt": "...", ["messages": [...],] ["prompt_token_ids": [...],]
     "num_prompt_tokens": 7,
     "num_cached_tokens": 0, "outputs": [{"index": 0, "text": "...", "token_ids": [...],
     "finish_reason": "length", "stop_reason": null,
     ["cumulative_logprob": -3.2, "logprobs": [[{"token_id": 5, "logprob": -0.1, "rank": 1,
     "token": "a"}, ...], ...]]}],
     ["prompt_logprobs": [null, [{"token_id": ...}, ...], ...]]}

`outputs` holds the `--n` completions. `logprobs`/`cumulative_logprob` appear with `--logprobs`,
`prompt_logprobs` with `--prompt-logprobs`; each position lists the engine's {token: Logprob}
entries in its order (non-finite logprobs are written as null). Chat prompts (`{"messages": ...}`
lines, or any prompt under `--chat`) carry `messages`, and `prompt` is the templated text.
Token-id prompts (`{"prompt_token_ids": [...]}` lines, for models without a tokenizer such as
`dummy:NAME`) carry `prompt_token_ids` (and `prompt` is null without a tokenizer).

Multi-host (`--coordinator-address HOST:PORT --num-processes N --process-id I`, or the JAXLLM_*
variables): every process runs the same command; `jax.distributed` is initialized before the
model loads. Process 0 reads the prompts, runs them and writes the output; the others build the
same engine, replay process 0's steps (`jaxllm.parallel.multihost.follow`) and exit 0 when it is
done, writing nothing. A follower started without its leader waits in `jax.distributed`'s
initialization until JAX's timeout.

Bad input (no prompts, a missing or malformed prompts file, bad config) prints one line on stderr
and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jaxllm.benchmarks.cli import add_bench_subcommand, run_bench
from jaxllm.entrypoints.cli_args import (
    CLIError,
    GenerateOptions,
    MultihostOptions,
    build_parser,
    resolve_generate_args,
)
from jaxllm.entrypoints.openai.serve_args import add_serve_subcommand
from jaxllm.sweep.cli import add_sweep_subcommand, run_sweep

__all__ = [
    "main",
    "run_generate",
    "run_convert",
    "PromptItem",
    "read_prompts_file",
    "collect_prompts",
    "request_output_to_json",
]


@dataclass
class PromptItem:
    """One input: a plain prompt, a chat conversation or prompt token ids (exactly one is set)."""

    prompt: str | None = None
    messages: list[dict] | None = None
    prompt_token_ids: list[int] | None = None

    def engine_prompt(self) -> str | dict[str, list[int]]:
        """What `LLM.generate` takes for a non-chat item."""
        if self.prompt_token_ids is not None:
            return {"prompt_token_ids": self.prompt_token_ids}
        assert self.prompt is not None
        return self.prompt


# ------------------------------------------------------------------------------------ prompts in


def _check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise CLIError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for m in messages:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise CLIError(f"{where}: each message needs a string 'role' and 'content', got {m!r}")
    return messages


_JSONL_KEYS = ("prompt", "messages", "prompt_token_ids")


def _check_token_ids(ids: Any, where: str) -> list[int]:
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)
    ):
        raise CLIError(
            f'{where}: "prompt_token_ids" must be a non-empty list of non-negative integers, '
            f"got {ids!r}"
        )
    return ids


def _parse_jsonl_line(line: str, where: str) -> PromptItem:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise CLIError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise CLIError(
            f'{where}: expected an object with "prompt" or "messages" (or "prompt_token_ids"), '
            f"got {obj!r}"
        )
    unknown = sorted(set(obj) - set(_JSONL_KEYS))
    if unknown:
        raise CLIError(
            f"{where}: unknown key(s) {', '.join(unknown)} "
            '(use "prompt", "messages" or "prompt_token_ids")'
        )
    if sum(k in obj for k in _JSONL_KEYS) != 1:
        raise CLIError(
            f'{where}: give exactly one of "prompt" and "messages" (or "prompt_token_ids")'
        )
    if "messages" in obj:
        return PromptItem(messages=_check_messages(obj["messages"], where))
    if "prompt_token_ids" in obj:
        return PromptItem(prompt_token_ids=_check_token_ids(obj["prompt_token_ids"], where))
    prompt = obj["prompt"]
    if not isinstance(prompt, str) or not prompt:
        raise CLIError(f'{where}: "prompt" must be a non-empty string, got {prompt!r}')
    return PromptItem(prompt=prompt)


def read_prompts_file(path: str) -> list[PromptItem]:
    """A `.jsonl` file (one {"prompt"}, {"messages"} or {"prompt_token_ids"} object a line) or a
    text file (one prompt a line). Blank lines are skipped. Errors name the file and the line
    number."""
    if not os.path.isfile(path):
        raise CLIError(f"prompts file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise CLIError(f"prompts file {path} is not UTF-8 text ({e.reason})") from None
    is_jsonl = path.lower().endswith(".jsonl")
    items = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        items.append(
            _parse_jsonl_line(line, f"{path}:{lineno}") if is_jsonl else PromptItem(prompt=line)
        )
    return items


def collect_prompts(opts: GenerateOptions) -> list[PromptItem]:
    """PROMPT arguments first, then the prompts file; `--chat` turns plain text prompts into
    messages (token-id prompts stay as they are)."""
    items = []
    for i, p in enumerate(opts.prompts):
        if not isinstance(p, str) or not p:
            raise CLIError(f"prompt {i} is empty")
        items.append(PromptItem(prompt=p))
    if opts.prompts_file:
        items.extend(read_prompts_file(opts.prompts_file))
    if not items:
        raise CLIError("no prompts: give PROMPT arguments or --prompts-file")
    if opts.chat:
        items = [
            PromptItem(messages=[{"role": "user", "content": it.prompt}])
            if it.prompt is not None
            else it
            for it in items
        ]
    return items


# ----------------------------------------------------------------------------------- results out


def _num(x: float | None) -> float | None:
    """JSON-safe float: non-finite values (e.g. -inf logprobs) become null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _position_to_json(entry: dict | None) -> list[dict] | None:
    if entry is None:
        return None
    return [
        {
            "token_id": int(tid),
            "logprob": _num(lp.logprob),
            "rank": lp.rank,
            "token": lp.decoded_token,
        }
        for tid, lp in entry.items()
    ]


def request_output_to_json(
    index: int, item: PromptItem, out: Any, with_logprobs: bool, with_prompt_logprobs: bool
) -> dict[str, Any]:
    """One JSONL record for a finished RequestOutput (see the module docstring for the schema)."""
    rec: dict[str, Any] = {"index": index}
    if item.messages is not None:
        rec["messages"] = item.messages
    rec["prompt"] = out.prompt if item.prompt is None else item.prompt
    if item.prompt_token_ids is not None:
        rec["prompt_token_ids"] = [int(t) for t in item.prompt_token_ids]
    rec["num_prompt_tokens"] = (
        len(out.prompt_token_ids) if out.prompt_token_ids is not None else None
    )
    rec["num_cached_tokens"] = out.num_cached_tokens
    completions = []
    for c in out.outputs:
        cj: dict[str, Any] = {
            "index": c.index,
            "text": c.text,
            "token_ids": [int(t) for t in c.token_ids],
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
        }
        if with_logprobs:
            cj["cumulative_logprob"] = _num(c.cumulative_logprob)
            cj["logprobs"] = (
                None if c.logprobs is None else [_position_to_json(p) for p in c.logprobs]
            )
        completions.append(cj)
    rec["outputs"] = completions
    if with_prompt_logprobs:
        rec["prompt_logprobs"] = (
            None
            if out.prompt_logprobs is None
            else [_position_to_json(p) for p in out.prompt_logprobs]
        )
    return rec


# ----------------------------------------------------------------------------------- subcommands


_BEAM_SAMPLING_KEYS = ("max_tokens", "ignore_eos", "temperature")


def _beam_search_params(opts: GenerateOptions, default_max_tokens: int | None = None) -> Any:
    """`--beam-width N` (+ --length-penalty, --max-tokens, --ignore-eos) -> BeamSearchParams;
    without --max-tokens, `default_max_tokens` (the model's max_new_tokens), else 16."""
    from jaxllm.beam_search import BeamSearchParams

    other = sorted(k for k in opts.sampling_kwargs if k not in _BEAM_SAMPLING_KEYS)
    if other:
        raise CLIError(f"--beam-width does not combine with sampling option(s): {', '.join(other)}")
    kw = {k: v for k, v in opts.sampling_kwargs.items() if v is not None}
    kw.setdefault("max_tokens", default_max_tokens or 16)
    if opts.length_penalty is not None:
        kw["length_penalty"] = opts.length_penalty
    try:
        return BeamSearchParams(beam_width=opts.beam_width, **kw)
    except ValueError as e:
        raise CLIError(f"bad beam search option: {e}") from None


def _beam_search_items(llm: Any, items: list[PromptItem], params: Any, progress: bool) -> list[Any]:
    """Beam search over the items; chat items go through the model's chat template (as LLM.chat)."""
    prompts: list[Any] = []
    for it in items:
        if it.messages is None:
            prompts.append(it.engine_prompt())
            continue
        text = llm.tokenizer.apply_chat_template(
            it.messages,
            tokenize=False,
            add_generation_prompt=True,
            chat_template=llm.chat_template,
        )
        ids = llm.tokenizer.encode(text, add_special_tokens=False)
        prompts.append({"prompt": text, "prompt_token_ids": ids})
    return llm.beam_search(prompts, params, use_tqdm=progress)


def beam_output_to_json(index: int, item: PromptItem, out: Any) -> dict[str, Any]:
    """A JSONL record of a BeamSearchOutput, as a RequestOutput's; `outputs`: beams, best first."""
    rec: dict[str, Any] = {"index": index}
    if item.messages is not None:
        rec["messages"] = item.messages
    rec["prompt"] = out.prompt
    if item.prompt_token_ids is not None:
        rec["prompt_token_ids"] = [int(t) for t in item.prompt_token_ids]
    rec["num_prompt_tokens"] = len(out.prompt_token_ids)
    rec["num_cached_tokens"] = out.num_cached_tokens
    rec["outputs"] = [
        {
            "index": r,
            "text": s.text,
            "token_ids": [int(t) for t in s.output_token_ids],
            "finish_reason": s.finish_reason,
            "stop_reason": s.stop_reason,
            "cumulative_logprob": _num(s.cum_logprob),
            "score": _num(s.score),
        }
        for r, s in enumerate(out.sequences)
    ]
    return rec


def _default_llm_factory(**engine_kwargs: Any) -> Any:
    from jaxllm.entrypoints.llm import LLM

    return LLM(**engine_kwargs)


def start_multihost(mh: MultihostOptions) -> None:
    """`jax.distributed.initialize` for this process (before anything touches a device)."""
    from jaxllm.parallel import multihost

    try:
        multihost.initialize(mh.coordinator_address, mh.num_processes, mh.process_id)
    except ValueError as e:
        raise CLIError(f"cannot join the multi-host run: {e}") from None


def _generate_all(
    llm: Any,
    items: list[PromptItem],
    sampling_params: Any,
    beam_params: Any,
    progress: bool,
) -> list[Any]:
    """One RequestOutput (or BeamSearchOutput) per item, in input order."""
    if beam_params is not None:
        return _beam_search_items(llm, items, beam_params, progress)
    plain = [i for i, it in enumerate(items) if it.messages is None]
    chats = [i for i, it in enumerate(items) if it.messages is not None]
    results: list[Any] = [None] * len(items)
    if plain:
        outs = llm.generate(
            [items[i].engine_prompt() for i in plain], sampling_params, use_tqdm=progress
        )
        for i, out in zip(plain, outs):
            results[i] = out
    if chats:
        outs = llm.chat([items[i].messages for i in chats], sampling_params, use_tqdm=progress)
        for i, out in zip(chats, outs):
            results[i] = out
    return results


def _completion_texts(results: list[Any], beam: bool) -> list[str]:
    """Every completion's generated text (beam search: every beam's), in input order."""
    if beam:
        return [s.text for out in results for s in out.sequences]
    return [c.text for out in results for c in out.outputs]


def _sampling_kwargs(opts: GenerateOptions, llm: Any) -> dict[str, Any]:
    """The model's generation_config defaults (`LLM.default_sampling_kwargs`, empty under
    `--generation-config vllm`) overridden by the sampling flags given."""
    return {**getattr(llm, "default_sampling_kwargs", {}), **opts.sampling_kwargs}


def run_generate(args: argparse.Namespace, llm_factory: Callable[..., Any] | None = None) -> int:
    """`jaxllm generate`. `llm_factory(**engine_kwargs)` builds the LLM (default: jaxllm's LLM).

    Raises CLIError on bad input (before any model is loaded). In a multi-host run, process 0
    does the work below and the other processes only build the engine and follow its steps.
    """
    opts = resolve_generate_args(args)
    mh = opts.multihost
    leader = mh is None or mh.is_leader
    to_stdout = opts.output in (None, "-")
    items: list[PromptItem] = []
    if leader:  # followers never see the prompts (nor need the files on their hosts)
        items = collect_prompts(opts)
        if not to_stdout:
            parent = os.path.dirname(os.path.abspath(opts.output))
            if not os.path.isdir(parent):
                raise CLIError(f"output folder does not exist: {parent}")

    from jaxllm.sampling_params import SamplingParams

    try:  # the flags alone, checked before the model loads
        SamplingParams(**opts.sampling_kwargs)
    except ValueError as e:
        raise CLIError(f"bad sampling option: {e}") from None
    beam_params = _beam_search_params(opts) if opts.beam_width is not None else None
    if mh is not None:
        start_multihost(mh)
    try:
        llm = (llm_factory or _default_llm_factory)(**opts.engine_kwargs)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f"cannot start the engine: {e}") from None

    if mh is not None and not leader:
        from jaxllm.parallel import multihost

        multihost.follow(llm.llm_engine)  # returns when process 0 is done
        return 0
    try:
        sampling_params = SamplingParams(**_sampling_kwargs(opts, llm))
    except ValueError as e:
        raise CLIError(f"bad sampling option with the model's generation_config: {e}") from None
    if beam_params is not None and "max_tokens" not in opts.sampling_kwargs:
        beam_params = _beam_search_params(opts, _sampling_kwargs(opts, llm).get("max_tokens"))
    try:
        results = _generate_all(llm, items, sampling_params, beam_params, opts.progress)
    finally:
        if mh is not None:  # release the followers, also when process 0 failed between steps
            from jaxllm.parallel import multihost

            multihost.stop_followers()

    if to_stdout and not opts.json_output:
        texts = _completion_texts(results, beam_params is not None)
        sys.stdout.write("\n".join(text + "\n" for text in texts))
        sys.stdout.flush()
        return 0
    with_lp = opts.sampling_kwargs.get("logprobs") is not None
    with_plp = opts.sampling_kwargs.get("prompt_logprobs") is not None
    lines = [
        json.dumps(
            beam_output_to_json(i, it, out)
            if beam_params is not None
            else request_output_to_json(i, it, out, with_lp, with_plp),
            ensure_ascii=False,
        )
        for i, (it, out) in enumerate(zip(items, results))
    ]
    text = "".join(line + "\n" for line in lines)
    if to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(opts.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """`jaxllm convert MODEL OUT_DIR [--dtype D] [--revision R]`."""
    from jaxllm.entrypoints.convert import convert_main

    try:
        rc = convert_main(args.model, args.out_dir, args.dtype, revision=args.revision)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    return rc if isinstance(rc, int) else 0


def main(
    argv: Sequence[str] | None = None, *, llm_factory: Callable[..., Any] | None = None
) -> int:
    """Entry point of the `jaxllm` script; returns the exit status."""
    # transformers' advice that PyTorch is missing: jaxllm uses only its tokenizers.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    add_serve_subcommand(parser)
    add_bench_subcommand(parser)
    add_sweep_subcommand(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed usage / the error
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "generate":
            return run_generate(args, llm_factory=llm_factory)
        if args.command == "convert":
            return run_convert(args)
        if args.command == "serve":
            from jaxllm.entrypoints.openai.api_server import run_serve

            return run_serve(args)
        if args.command == "bench":
            return run_bench(args)
        if args.command == "sweep":
            return run_sweep(args)
    except CLIError as e:
        print(f"jaxllm {args.command}: error: {e}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
