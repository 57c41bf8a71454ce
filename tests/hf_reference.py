"""The HF transformers references the model tests compare with: tiny random-weight models built
from a config and saved as HF folders, and their greedy generations (torch, float32)."""

from __future__ import annotations

import torch
import transformers

# The fields the tiny random test models share (a vocabulary of 300, GQA 4:2 at width 64); each
# test adds its layer count and widths. A large initializer_range peaks the logits, so greedy
# choices are not float near-ties.
TINY_CONFIG = dict(
    vocab_size=300,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


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


def hf_logits(model, token_ids: list[int]):
    """HF's logits [len, V] of one sequence (float32 numpy), with an all-ones attention mask."""
    ids = torch.tensor([token_ids])
    with torch.no_grad():
        return model(ids, attention_mask=torch.ones_like(ids)).logits[0].float().numpy()


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
