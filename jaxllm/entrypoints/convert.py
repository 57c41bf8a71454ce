"""`jaxllm convert MODEL OUT_DIR`: load any accepted model once and save it as a converted folder
(orbax params + config + tokenizer) that later loads without dequantizing or restacking."""

from __future__ import annotations

import time

import jax


def convert_main(
    model: str,
    out_dir: str,
    dtype: str = "auto",
    *,
    overwrite: bool = False,
    revision: str | None = None,
) -> str:
    """Convert `model` (anything `load_model` accepts, a hub id at `revision`) into `out_dir`;
    returns the folder path."""
    from jaxllm.model_loader import load_model
    from jaxllm.model_loader.orbax import save_converted

    start = time.perf_counter()
    loaded = load_model(model, dtype=dtype, tokenizer=True, revision=revision)
    if loaded.config.quantization is not None:  # a converted folder holds float weights
        from jaxllm.quantization.layout import dequantize_params

        loaded.params = dequantize_params(
            loaded.params, loaded.config.quantization, loaded.config.dtype
        )
        loaded.config = loaded.config.replace(quantization=None)
    path = save_converted(loaded, out_dir, overwrite=overwrite)
    n_params = sum(x.size for x in jax.tree.leaves(loaded.params))
    print(
        f"converted {loaded.source} -> {path}: {n_params / 1e6:.1f}M params, "
        f"{loaded.config.dtype}, tokenizer {'saved' if loaded.tokenizer is not None else 'none'}, "
        f"{time.perf_counter() - start:.1f}s"
    )
    return path
