"""Beam search on top of the engine, as vLLM's `LLM.beam_search` does it (host side; no JAX).

    params = BeamSearchParams(beam_width=4, max_tokens=16)
    outs = llm.beam_search(["The capital of France is"], params)
    outs[0].sequences[0].text  # the best beam; sequences are sorted best first

How it runs. Every round, each live beam of every prompt becomes one engine request whose prompt is
the beam's whole token list (prompt + generated so far), with `max_tokens=1` and
`logprobs=max(2 * beam_width, beam_width + number of eos ids)`; all of a round's requests go
through the engine together (one `generate` call, continuous batching). The top-logprob entries of
each request are the beam's candidate continuations. Beams fork onto shared KV blocks through
automatic prefix caching (`enable_prefix_caching`, on by default): every full block of a beam's
tokens is keyed by a hash chained to its parent block, so the prompt's blocks and the blocks of a
common generated prefix, computed once, are found by hash and reused by every beam (and every later
round) that shares them; only each beam's partly filled last block is recomputed per round.
`BeamSearchOutput.num_cached_tokens` counts the prompt tokens so served, summed over all rounds.
Without prefix caching the results are the same, only slower.

Semantics: HF transformers' beam search, exactly (`generate(num_beams=k, do_sample=False,
num_return_sequences=k, length_penalty=lp, early_stopping=es)`, transformers >= 4.50, whose
vectorised `_beam_search` this follows rule for rule):

* Scores. A beam's `cum_logprob` is the sum of the raw log-softmax of the model's logits at each
  generated token, eos included. A *finished* hypothesis is ranked by
  `score = cum_logprob / L ** length_penalty`, where L is the number of GENERATED tokens including
  the final eos (prompt tokens do not count). vLLM's own `get_beam_search_score` differs: it
  counts the prompt and leaves out the eos; jaxllm follows HF.
* Each round, the candidates of all live beams (beam cum_logprob + token logprob) are ranked by
  cum_logprob and the best `max(2, 1 + n_eos) * k` kept (HF's `beams_to_keep`). A candidate "stops"
  if its token is an eos id (unless `ignore_eos`) or if it reaches the length limit
  (`max_tokens`, or `max_model_len` minus the prompt). The next live beams are the k best
  candidates that do not stop. Stopping candidates ranked among the first k join the finished
  set, which keeps the k best by score; stopping candidates ranked below k are dropped. On the last
  round every candidate stops, so the k best of that round are scored as finished too.
* `early_stopping` (an addition to vLLM's fields, with HF's meaning and default):
  `True`: a prompt is done as soon as k hypotheses are finished. `False` (HF's default): once k are
  finished, it is done when the best live beam's `cum_logprob / L ** length_penalty` at its current
  length L is not better than the worst finished score (a heuristic). `"never"`: the same test,
  but with L = the length limit when `length_penalty > 0` (then the result is that of running all
  rounds). A done prompt adds no more hypotheses; the search stops when every prompt is done.
* vLLM's loop differs in two more ways that change results: it keeps every eos candidate of each
  beam's top 2k as completed (HF and jaxllm: only eos candidates ranked in the round's top k), and
  it always runs max_tokens rounds. jaxllm's results therefore equal HF's, not vLLM's.
* The output holds the k best finished hypotheses, best first (HF's `num_return_sequences=k`).
  With `beam_width=1` and `early_stopping` False or True this is exactly greedy decoding,
  eos included (the heuristic stops as soon as eos is the argmax).
* `temperature` is passed to the per-round request as vLLM does. The engine's logprobs are the raw
  (unscaled) ones, so it only decides which extra sampled token joins a beam's candidates; 0.0, the
  default, gives the deterministic search above.

Text: `BeamSearchSequence.text` decodes the generated tokens (not the prompt); a final eos is left
out unless `include_stop_str_in_output`. `tokens` holds prompt + generated ids, as vLLM's does;
`output_token_ids` gives the generated part.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jaxllm.outputs import Logprob
from jaxllm.sampling_params import SamplingParams

__all__ = [
    "BeamSearchParams",
    "BeamSearchSequence",
    "BeamSearchOutput",
    "BeamSearchInstance",
    "beam_search_score",
    "num_candidate_logprobs",
    "run_beam_search",
]


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_finite_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class BeamSearchParams:
    """Beam search parameters: vLLM's fields plus HF's `early_stopping`; checked on construction."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False
    early_stopping: bool | str = False

    def __post_init__(self) -> None:
        if not _is_int(self.beam_width) or self.beam_width < 1:
            raise ValueError(f"beam_width must be an integer >= 1, got {self.beam_width!r}.")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}.")
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if not _is_finite_number(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}.")
        if not _is_finite_number(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        es = self.early_stopping
        if not (es is True or es is False or (isinstance(es, str) and es == "never")):
            raise ValueError(f"early_stopping must be True, False or 'never', got {es!r}")


@dataclass
class BeamSearchSequence:
    """One beam. `tokens` = prompt + generated ids (vLLM's convention); `logprobs` has one
    {token_id: Logprob} dict per generated token (the candidates the engine returned there)."""

    tokens: list[int]
    logprobs: list[dict[int, Logprob]]
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None  # "stop" (eos) or "length"; None while live
    stop_reason: int | str | None = None  # None for eos and length, as CompletionOutput's
    num_prompt_tokens: int = 0
    score: float | None = None  # cum_logprob / L ** length_penalty, set when finished

    @property
    def output_token_ids(self) -> list[int]:
        return self.tokens[self.num_prompt_tokens :]


@dataclass
class BeamSearchOutput:
    """The result for one prompt: `sequences` (beam_width of them), best first."""

    sequences: list[BeamSearchSequence]
    prompt: str | None = None
    prompt_token_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache, over all rounds


def beam_search_score(cum_logprob: float, num_generated: int, length_penalty: float) -> float:
    """HF's score of a finished beam: cum_logprob / num_generated**length_penalty (eos counted)."""
    return cum_logprob / (num_generated**length_penalty)


def _best_first(seq: BeamSearchSequence) -> float:
    """Sort key: higher score first (every scored beam has one)."""
    if seq.score is None:
        raise ValueError("beam has no score yet")
    return -seq.score


def num_candidate_logprobs(beam_width: int, num_eos: int) -> int:
    """Logprobs asked per beam per round: enough for the k best non-eos candidates of any beam."""
    return max(2 * beam_width, beam_width + num_eos)


class BeamSearchInstance:
    """The search state of one prompt: live beams, finished hypotheses, and whether it is done."""

    def __init__(
        self,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: BeamSearchParams,
        eos_token_ids: Sequence[int],
        max_generated: int,
    ) -> None:
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.eos = frozenset(() if params.ignore_eos else eos_token_ids)
        self.max_generated = max_generated  # the length limit L_max of a generated sequence
        self.num_keep = max(2, 1 + len(self.eos)) * params.beam_width  # HF's beams_to_keep
        n = len(self.prompt_token_ids)
        self.beams = [BeamSearchSequence(list(self.prompt_token_ids), [], 0.0, num_prompt_tokens=n)]
        self.finished: list[BeamSearchSequence] = []
        self.num_generated = 0  # tokens generated by each live beam so far
        self.num_cached_tokens = 0
        self.done = False

    def advance(self, beam_logprobs: Sequence[dict[int, Logprob]]) -> None:
        """One round: beam_logprobs[i] holds the candidate next tokens of self.beams[i]."""
        if len(beam_logprobs) != len(self.beams):
            raise ValueError(f"got {len(beam_logprobs)} candidate sets for {len(self.beams)} beams")
        k = self.params.beam_width
        new_len = self.num_generated + 1
        at_limit = new_len >= self.max_generated
        cands = [
            (beam.cum_logprob + lp.logprob, b, tok, lps)
            for b, (beam, lps) in enumerate(zip(self.beams, beam_logprobs))
            for tok, lp in lps.items()
        ]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        running: list[BeamSearchSequence] = []
        for rank, (cum, b, tok, lps) in enumerate(cands[: self.num_keep]):
            is_eos = tok in self.eos
            stops = is_eos or at_limit
            if stops and rank >= k:
                continue  # only the top k candidates may finish (HF's top_num_beam_mask)
            if not stops and len(running) == k:
                continue
            parent = self.beams[b]
            seq = BeamSearchSequence(
                parent.tokens + [tok],
                parent.logprobs + [lps],
                cum,
                num_prompt_tokens=parent.num_prompt_tokens,
            )
            if stops:
                seq.finish_reason = "stop" if is_eos else "length"
                seq.score = beam_search_score(cum, new_len, self.params.length_penalty)
                self.finished.append(seq)
            else:
                running.append(seq)
        # keep the k best finished (stable: earlier hypotheses win ties)
        self.finished.sort(key=_best_first)
        del self.finished[k:]
        self.beams = running
        self.num_generated = new_len
        self.done = self._is_done()

    def _is_done(self) -> bool:
        k = self.params.beam_width
        if not self.beams:
            return True
        if len(self.finished) < k:
            return False
        es, lp = self.params.early_stopping, self.params.length_penalty
        if es is True:
            return True
        length = self.max_generated if (es == "never" and lp > 0) else self.num_generated
        best_possible = beam_search_score(self.beams[0].cum_logprob, length, lp)
        return not best_possible > -_best_first(self.finished[-1])

    def result(self, decode: Callable[[list[int]], str] | None) -> BeamSearchOutput:
        """The k best finished hypotheses (topped up with live beams if ever fewer), best first."""
        k = self.params.beam_width
        seqs = list(self.finished)
        if len(seqs) < k:
            for beam in self.beams:
                beam.score = beam_search_score(
                    beam.cum_logprob, max(self.num_generated, 1), self.params.length_penalty
                )
            seqs = sorted(seqs + self.beams, key=_best_first)[:k]
        for seq in seqs:
            out = seq.output_token_ids
            if seq.finish_reason == "stop" and not self.params.include_stop_str_in_output:
                out = out[:-1]
            seq.text = decode(out) if decode is not None else None
        return BeamSearchOutput(seqs, self.prompt, self.prompt_token_ids, self.num_cached_tokens)


def prompt_to_ids(
    prompt: Any, tokenize: Callable[[str], list[int]]
) -> tuple[str | None, list[int]]:
    """A prompt (str, list of token ids, or {"prompt"/"prompt_token_ids"} dict) -> (text, ids)."""
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]]
        if "prompt" not in prompt:
            raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        prompt = prompt["prompt"]
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty")
        return prompt, list(tokenize(prompt))
    if isinstance(prompt, Sequence) and all(_is_int(t) for t in prompt):
        return None, [int(t) for t in prompt]
    raise ValueError(f"prompt must be a string, a list of token ids or a dict, got {prompt!r}")


def run_beam_search(
    generate: Callable[[list[list[int]], SamplingParams], list[Any]],
    prompts: Sequence[tuple[str | None, list[int]]],
    params: BeamSearchParams,
    *,
    eos_token_ids: Sequence[int],
    max_model_len: int,
    max_logprobs: int,
    decode: Callable[[list[int]], str] | None = None,
    use_tqdm: bool = False,
) -> list[BeamSearchOutput]:
    """Beam search over (text, token ids) prompts, one engine round per generated token.

    `generate(token_id_prompts, sampling_params)` runs each prompt for one token and returns
    RequestOutput-like records in order (each with `.outputs[0].logprobs[0]`, a {token: Logprob}
    dict, and `.num_cached_tokens`); `LLM.beam_search` passes its own `generate`.
    """
    if not isinstance(params, BeamSearchParams):
        raise ValueError(f"params must be a BeamSearchParams, got {type(params).__name__}")
    num_eos = 0 if params.ignore_eos else len(set(eos_token_ids))
    num_lp = num_candidate_logprobs(params.beam_width, num_eos)
    if num_lp > max_logprobs:
        raise ValueError(
            f"beam_width={params.beam_width} needs {num_lp} logprobs per step, more than the "
            f"engine's max_logprobs ({max_logprobs}); lower beam_width or raise "
            "LLM(max_logprobs=...)"
        )
    instances = []
    for i, (text, ids) in enumerate(prompts):
        if not ids:
            raise ValueError(f"prompt {i} is empty (0 tokens)")
        room = max_model_len - len(ids)
        if room < 1:
            raise ValueError(
                f"prompt {i} is {len(ids)} tokens long, leaving no room under max_model_len "
                f"({max_model_len})"
            )
        instances.append(
            BeamSearchInstance(text, ids, params, eos_token_ids, min(params.max_tokens, room))
        )
    round_params = SamplingParams(
        n=1,
        max_tokens=1,
        logprobs=num_lp,
        temperature=params.temperature,
        ignore_eos=True,
        detokenize=False,
    )
    bar = None
    if use_tqdm:
        from tqdm.auto import tqdm

        bar = tqdm(total=max(inst.max_generated for inst in instances), desc="Beam search")
    try:
        while True:
            live = [inst for inst in instances if not inst.done]
            if not live:
                break
            batch = [beam.tokens for inst in live for beam in inst.beams]
            outs = generate(batch, round_params)
            pos = 0
            for inst in live:
                n = len(inst.beams)
                chunk = outs[pos : pos + n]
                pos += n
                inst.num_cached_tokens += sum(int(o.num_cached_tokens or 0) for o in chunk)
                inst.advance([o.outputs[0].logprobs[0] for o in chunk])
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [inst.result(decode) for inst in instances]
