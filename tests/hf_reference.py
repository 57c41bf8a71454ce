"""The HF transformers references the model tests compare with: tiny random-weight models built
from a config and saved as HF folders, and their greedy generations (torch, float32)."""

from __future__ import annotations

import torch
import transformers


def random_hf_model(config, folder, *, norm_noise: float = 0.0, seed: int = 0):
    """A float32 model of `config` with seeded random weights, saved to `folder`.

    `norm_noise`: std of noise added to every `*norm.weight`, so that a norm the engine misses or
    misreads shows in its outputs (HF initializes them to one, or zero for Gemma)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if norm_noise:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.add_(torch.randn_like(p) * norm_noise)
    model.save_pretrained(folder)
    return model


def hf_greedy(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """HF `generate`'s greedy continuations of exactly `new_tokens` tokens (min_new_tokens, as the
    engine's min_tokens), one prompt at a time. The attention mask is all ones: without it HF
    infers one from pad_token_id and hides prompt tokens equal to it."""
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        with torch.no_grad():
            g = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            )
        outs.append(g[0, len(p) :].tolist())
    return outs
