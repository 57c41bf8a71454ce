"""The HF transformers peer (`--peer hf`): the same weights in torch (`load_hf_peer`), batched
greedy `generate` with left padding (`hf_generate`), and per-step timing of one batch of prompts
(`hf_latency`).

Weights: for a .gguf file (or a built-in name) `from_pretrained(folder, gguf_file=...)`, the same
GGUF jaxllm loads; for an HF folder `from_pretrained(folder)`; for `dummy:NAME` an HF model of the
preset's config with random weights (speed only), on a CUDA GPU only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from jaxllm.benchmarks.datasets import BenchRequest


class PeerUnavailable(Exception):
    """The HF peer cannot run this model here (the message says why)."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is torch running out of device memory (the peer is then skipped, noted)."""
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def load_hf_peer(
    model: str, dtype: str, threads: int, jax_backend: str, revision: str | None = None
):
    """The same weights as jaxllm's `model` in HF transformers (torch), eval mode, on the device
    kind jaxllm ran on (`jax_backend`: "gpu" -> cuda, else the CPU with `threads` threads).

    built-in name / .gguf: `from_pretrained(folder, gguf_file=...)` (dequantized);
    an HF folder (or a hub id's snapshot at `revision`): `from_pretrained(folder)`; `dummy:NAME`:
    on a CUDA GPU only, an HF model of the preset's config with random weights (speed only).
    """
    from jaxllm.model_loader import resolve_model

    fmt, path = resolve_model(model, revision)
    if fmt == "dummy" and jax_backend != "gpu":
        raise PeerUnavailable(
            f"{model}: the HF peer of a dummy model runs only on a CUDA GPU (random weights, "
            "speed only); skipped on the CPU"
        )
    import torch
    import transformers

    torch.set_num_threads(threads)
    want = {
        "auto": torch.float32,
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }.get(str(dtype).lower())
    if want is None:
        raise ValueError(f"dtype {dtype!r} is not supported by the HF peer")
    device = "cpu"
    if jax_backend == "gpu":
        if not torch.cuda.is_available():
            raise PeerUnavailable("jaxllm ran on a GPU but this torch build has no CUDA")
        device = "cuda"
    if fmt == "gguf":
        folder, name = os.path.split(path)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=want)
    elif fmt == "hf":
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=want)
    elif fmt == "dummy":
        if device != "cuda":
            raise PeerUnavailable(
                f"{model}: the HF peer of a dummy model runs only on a CUDA GPU (random weights, "
                "speed only); skipped on the CPU"
            )
        from jaxllm.model_loader.dummy import PRESETS

        fields = {k: v for k, v in PRESETS[model[len("dummy:") :]].items() if k != "architectures"}
        cfg = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
        with torch.device(device):
            hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=want)
    else:
        raise PeerUnavailable(f"{model}: the HF peer does not load {fmt} checkpoints")
    return hf.to(device).eval()


def _left_pad(batch: Sequence[Sequence[int]], pad_id: int, device: str):
    import torch

    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _pad_id(hf) -> int:
    gc = hf.generation_config
    for cand in (gc.pad_token_id, gc.eos_token_id, hf.config.eos_token_id, 0):
        if isinstance(cand, list):
            cand = cand[0] if cand else None
        if cand is not None:
            return int(cand)
    return 0


def _sync(hf) -> None:
    import torch

    if hf.device.type == "cuda":
        torch.cuda.synchronize()


def hf_generate(hf, reqs: Sequence[BenchRequest], batch_size: int | None) -> dict:
    """Greedy batched `generate` of every request (left padding + attention mask), exactly
    output_len new tokens each; requests are grouped by output_len, then cut into batches of
    `batch_size` (None: one batch per group). Returns elapsed seconds and token counts."""
    import torch

    pad = _pad_id(hf)
    groups: dict[int, list[BenchRequest]] = {}
    for r in reqs:
        groups.setdefault(r.output_len, []).append(r)
    out_tokens = 0
    elapsed = 0.0
    num_batches = 0
    for out_len, group in sorted(groups.items()):
        bs = batch_size or len(group)
        for i in range(0, len(group), bs):
            chunk = group[i : i + bs]
            ids, mask = _left_pad([r.prompt_token_ids for r in chunk], pad, hf.device)
            _sync(hf)
            t0 = time.perf_counter()
            with torch.no_grad():
                gen = hf.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=out_len,
                    min_new_tokens=out_len,
                    pad_token_id=pad,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            _sync(hf)
            elapsed += time.perf_counter() - t0
            new = gen.shape[1] - ids.shape[1]
            if new != out_len:
                raise RuntimeError(f"HF generated {new} tokens, expected {out_len}")
            out_tokens += new * len(chunk)
            num_batches += 1
    return {"elapsed_s": elapsed, "output_tokens": out_tokens, "num_batches": num_batches}


def hf_latency(hf, prompts: Sequence[Sequence[int]], output_len: int) -> dict:
    """Greedy generate of one batch (all prompts at once, left padded) with a timing streamer: the
    streamer's `put` runs once with the prompts, then once per decoding step (one new token for
    every prompt), so the gaps between its calls are the per-step times."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class TimingStreamer(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            _sync(hf)
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    if not prompts or isinstance(prompts[0], int):
        raise ValueError("hf_latency takes a batch: a list of prompts of token ids")
    pad = _pad_id(hf)
    ids, mask = _left_pad([list(p) for p in prompts], pad, hf.device)
    streamer = TimingStreamer()
    _sync(hf)
    t0 = time.perf_counter()
    with torch.no_grad():
        gen = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            num_beams=1,
            max_new_tokens=output_len,
            min_new_tokens=output_len,
            pad_token_id=pad,
            temperature=None,
            top_p=None,
            top_k=None,
            streamer=streamer,
        )
    end = time.perf_counter()
    if gen.shape[1] - ids.shape[1] != output_len:
        raise RuntimeError("HF generated the wrong number of tokens")
    token_times = streamer.times[1:]  # [0] is the prompt
    return {
        "ttft_s": token_times[0] - t0,
        "decode_s": [b - a for a, b in zip(token_times[:-1], token_times[1:])],
        "total_s": end - t0,
    }
