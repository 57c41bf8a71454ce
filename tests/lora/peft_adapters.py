"""PEFT LoRA adapters with random non-zero B for the LoRA tests, and HF+peft's greedy tokens.

`make_adapter` wraps a transformers model with `peft.get_peft_model`, gives B (which PEFT starts
at zero, a no-op adapter) seeded random values, and saves the adapter folder; the same wrapped
model is the reference. The adapters differ in rank, alpha, rsLoRA and targets, so each of those
paths of the loader shows in the tokens."""

from __future__ import annotations

import torch

# name -> LoraConfig fields; every one changes SmolLM2's greedy continuations
ADAPTERS = {
    "attn-r8": dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "all-r16-rslora": dict(
        r=16,
        lora_alpha=8,
        use_rslora=True,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    ),
    "mlp-r4": dict(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"]),
}


def init_b(peft_model, adapter: str, seed: int, std: float = 0.05) -> None:
    """Seeded random B (and A) of one adapter: PEFT's B starts at zero, which would test nothing."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if f"lora_B.{adapter}." in name or f"lora_A.{adapter}." in name:
                scale = std if "lora_B" in name else 1.0 / p.shape[1] ** 0.5
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def make_adapters(base_model, folder, specs: dict = ADAPTERS, seed: int = 0):
    """A PeftModel over `base_model` (modified in place) holding every adapter of `specs`, each
    saved to folder/NAME. Returns (peft_model, {name: path})."""
    from peft import LoraConfig, get_peft_model

    peft_model = None
    paths = {}
    for i, (name, spec) in enumerate(specs.items()):
        config = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **spec)
        if peft_model is None:
            peft_model = get_peft_model(base_model, config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)
        init_b(peft_model, name, seed + i)
    assert peft_model is not None
    peft_model.eval()
    for name in specs:
        path = folder / name
        peft_model.save_pretrained(str(folder), selected_adapters=[name])
        # PEFT saves adapters other than "default" under folder/NAME
        paths[name] = str(path)
    return peft_model, paths


def hf_greedy_tokens(model, prompt: list[int], tokens: list[int], eos_ids) -> list[int]:
    """HF's greedy choice after the prompt and each prefix of `tokens`, from one forward pass
    (eos banned, as `min_new_tokens` bans it): equal to `tokens` exactly when HF's greedy
    `generate` would produce `tokens`."""
    ids = torch.tensor([prompt + tokens[:-1]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    logits[:, list(eos_ids)] = -float("inf")
    return logits[len(prompt) - 1 :].argmax(-1).tolist()
