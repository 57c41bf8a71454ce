"""Load a Hugging Face checkpoint folder into jaxllm's parameter pytree.

The folder holds `config.json`, the weights as one `model.safetensors` or shards listed in
`model.safetensors.index.json`, optionally `generation_config.json` and tokenizer files.

The parameter layout (each leaf's path, HF tensor name and shape) is the model's own, read through
`jaxllm.models.layout`; `assemble_params` fills it from HF-named tensors for every loader.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.model_loader.errors import ModelNotFoundError
from jaxllm.model_loader.hf_fp8 import SCALE_SUFFIXES, fp8_checkpoint_kind, fp8_leaves
from jaxllm.model_loader.loaded_model import LoadedModel
from jaxllm.models.layout import param_layout, quantizable_kernels
from jaxllm.models.param_spec import ParamSpec, set_path
from jaxllm.models.registry import architecture_for_model_type, check_architecture
from jaxllm.quantization.layout import weight_only_config

logger = logging.getLogger(__name__)

HOST_DTYPES: dict[str, Any] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(jnp.bfloat16),  # ml_dtypes' bfloat16, usable by numpy
}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# Tensors some checkpoints carry that hold nothing jaxllm needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# safetensors dtype -> the ml_dtypes type its bytes are read as (numpy has neither)
_RAW_DTYPES = {"BF16": jnp.bfloat16, "F8_E4M3": jnp.float8_e4m3fn}


def assemble_params(
    config: ModelConfig,
    get_tensor: Callable[[str], np.ndarray],
    source: str,
    placer: Callable[[ModelConfig], Callable[[ParamSpec, np.ndarray], jax.Array]] | None = None,
    skip: frozenset[tuple[str, ...]] = frozenset(),
) -> dict:
    """Build the device pytree in `config.dtype` from HF-named tensors (the layout's leaves but
    those in `skip`, which the caller fills: quantized weights kept as stored).

    `get_tensor(hf_name)` returns one tensor in HF layout (linear weights [out, in]); any float
    dtype. Per-layer tensors are stacked into one host buffer per leaf, then put on the device:
    by `placer(config)(spec, buf)` when given (e.g. `jaxllm.parallel.host_placer`, straight into
    the shards of a mesh), else `jax.device_put(buf)`.
    """
    place = placer(config) if placer is not None else (lambda spec, buf: jax.device_put(buf))
    host_dtype = HOST_DTYPES[config.dtype]
    params: dict = {}
    for spec in param_layout(config):
        if spec.path in skip:
            continue
        buf = np.empty(spec.shape, host_dtype)
        for index, name in spec.hf_tensors():
            t = get_tensor(name)
            if spec.hf_rows is not None:  # this leaf's rows of a fused tensor
                start, stop = spec.hf_rows
                if t.ndim < 1 or t.shape[0] < stop:
                    raise ValueError(
                        f"{source}: tensor {name!r} has shape {tuple(t.shape)}, too few rows for "
                        f"rows {start}:{stop} that the model config expects"
                    )
                t = t[start:stop]
            if tuple(t.shape) != spec.hf_shape:
                raise ValueError(
                    f"{source}: tensor {name!r} has shape {tuple(t.shape)}, "
                    f"expected {spec.hf_shape} from the model config"
                )
            buf[index] = t.T if spec.transpose else t
        set_path(params, spec.path, place(spec, buf))
        del buf
    return params


# ----------------------------------------------------------------------------- safetensors


def _read_header(path: str) -> tuple[dict, int]:
    """The safetensors JSON header and the byte offset where tensor data starts."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header, 8 + n


class _SafetensorsReader:
    """Random access to tensors across one or more safetensors files, as numpy arrays."""

    def __init__(self, folder: str, stack: ExitStack):
        from safetensors import safe_open

        index = os.path.join(folder, "model.safetensors.index.json")
        single = os.path.join(folder, "model.safetensors")
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    weight_map: dict[str, str] = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise ValueError(f"{index}: not a valid safetensors index ({e})") from e
        elif os.path.isfile(single):
            weight_map = None  # filled from the file's keys below
        else:
            raise ModelNotFoundError(
                f"{folder}: no model.safetensors or model.safetensors.index.json "
                "(only safetensors weights are supported)"
            )
        files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        self._handles: dict[str, Any] = {}
        self._paths: dict[str, str] = {}
        for fname in files:
            path = os.path.join(folder, fname)
            if not os.path.isfile(path):
                raise ModelNotFoundError(f"{path}: weight file listed in the index is missing")
            try:
                self._handles[fname] = stack.enter_context(safe_open(path, framework="np"))
            except Exception as e:  # safetensors raises its own SafetensorError
                raise ValueError(
                    f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
                ) from e
            self._paths[fname] = path
        if weight_map is None:
            # a safetensors handle, not a dict: it has keys() but is not iterable
            handle = self._handles["model.safetensors"]
            weight_map = {k: "model.safetensors" for k in handle.keys()}  # noqa: SIM118
        self.weight_map = weight_map
        self._headers: dict[str, tuple[dict, int]] = {}

    def names(self) -> list[str]:
        return list(self.weight_map)

    def get(self, name: str) -> np.ndarray:
        fname = self.weight_map.get(name)
        if fname is None:
            raise ValueError(f"{self.source}: tensor {name!r} is missing from the checkpoint")
        handle, path = self._handles[fname], self._paths[fname]
        try:
            kind = handle.get_slice(name).get_dtype()
            if kind in _RAW_DTYPES:
                return self._get_raw(fname, name, _RAW_DTYPES[kind])
            return handle.get_tensor(name)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"{path}: cannot read tensor {name!r}: {e}") from e

    def _get_raw(self, fname: str, name: str, dtype: Any) -> np.ndarray:
        # numpy has no bfloat16 or float8, so safetensors' numpy API refuses them: read the bytes
        # ourselves as ml_dtypes' types.
        path = self._paths[fname]
        if fname not in self._headers:
            self._headers[fname] = _read_header(path)
        header, data_start = self._headers[fname]
        info = header[name]
        start, end = info["data_offsets"]
        itemsize = np.dtype(dtype).itemsize
        raw = np.fromfile(
            path, dtype=f"u{itemsize}", count=(end - start) // itemsize, offset=data_start + start
        )
        return raw.view(dtype).reshape(info["shape"])

    @property
    def source(self) -> str:
        return ", ".join(self._paths.values())


# ----------------------------------------------------------------------------- folder


def read_hf_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"{folder}: missing config.json (not a Hugging Face model folder)")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot parse config.json: {e}") from e


def checkpoint_dtype(hf: dict) -> str:
    """The dtype the checkpoint was saved in (`torch_dtype`, or `dtype` in transformers 5)."""
    name = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    return name if name in HOST_DTYPES else "float32"


def config_from_hf(hf: dict, dtype: str, source: str) -> ModelConfig:
    archs = hf.get("architectures") or []
    if archs:
        check_architecture(archs[0], source)
    else:  # an old config without `architectures`: its model_type names the architecture
        arch = architecture_for_model_type(str(hf.get("model_type", "")))
        if arch is not None:
            hf = {**hf, "architectures": [arch]}
    try:
        config = ModelConfig.from_hf_dict(hf, dtype)
    except KeyError as e:
        raise ValueError(f"{source}: config is missing the field {e}") from e
    check_architecture(config.architecture, source)
    return config


def load_tokenizer(folder: str) -> Any:
    """An HF tokenizer from `folder`, or None when the folder has no tokenizer files."""
    if not any(os.path.isfile(os.path.join(folder, f)) for f in _TOKENIZER_FILES):
        logger.warning("%s has no tokenizer files; the engine will need token ids", folder)
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise ValueError(f"{folder}: cannot load the tokenizer: {e}") from e


def read_generation_config(folder: str) -> dict:
    path = os.path.join(folder, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot parse generation_config.json: {e}") from e


def _place_fp8(config, kept, get, available, params, placer, folder) -> ModelConfig:
    """Read the fp8 kernels of `kept` (every layer's, stacked) into `params` as the fp8 format's
    leaves; returns `config` with its quantization. Any other tensor stored with a scale (one
    that jaxllm would read as float) is an error."""
    kept_names = set()
    config = config.replace(quantization=weight_only_config("fp8", list(kept)))
    place = placer(config) if placer is not None else None
    for spec in param_layout(config):
        if spec.path not in kept:
            continue
        names = [spec.hf_name.format(i=i) for i in range(config.num_hidden_layers)]
        kept_names.update(names)
        out = spec.shape[-1]
        per_layer = [fp8_leaves(get, n, spec.hf_rows, out) for n in names]
        for leaf, buf in zip(("kernel_fp8", "kernel_scale"), zip(*per_layer)):
            array = np.stack(buf)
            path = spec.path[:-1] + (leaf,)
            placed = jax.device_put(array) if place is None else place(_LeafSpec(path), array)
            set_path(params, path, placed)
    others = sorted(
        n[: -len("_scale")]
        for n in available
        if n.endswith(".weight_scale") and n[: -len("_scale")] not in kept_names
    )
    if others:
        raise ValueError(
            f"{folder}: tensors quantized in the checkpoint that jaxllm keeps in float (the "
            f"decoder's linear layers only are read as fp8): {others[:5]}"
        )
    return config


class _LeafSpec:
    """The `path` a placer needs for a leaf that no ParamSpec describes (a quantized leaf)."""

    def __init__(self, path: tuple[str, ...]):
        self.path = path


def _hf_names_for(config: ModelConfig) -> set[str]:
    return {name for spec in param_layout(config) for _, name in spec.hf_tensors()}


def load_hf(
    folder: str,
    dtype: str | None = None,
    tokenizer: bool = True,
    placer=None,
    quantization: str | None = None,
):
    """Load an HF folder; dtype None means the checkpoint's own dtype. Returns a LoadedModel.

    A checkpoint with a `quantization_config` loads pre-quantized where jaxllm reads its kind
    (hf_fp8.py: method fp8), unless `quantization` asks for another method (an error).
    `placer`: see `assemble_params` (None: each leaf to the default device)."""
    folder = os.path.abspath(folder)
    hf = read_hf_config(folder)
    config = config_from_hf(hf, dtype or checkpoint_dtype(hf), os.path.join(folder, "config.json"))
    qc = hf.get("quantization_config")
    kept: dict[tuple[str, ...], str] = {}
    if qc is not None:
        kind = fp8_checkpoint_kind(qc, folder)
        if quantization not in (None, "fp8"):
            raise ValueError(
                f"{folder}: the checkpoint is quantized ({kind}); quantization={quantization!r} "
                "cannot re-quantize it (leave quantization unset, or 'fp8')"
            )
        kept = {path: "fp8" for path in quantizable_kernels(config)}

    with ExitStack() as stack:
        reader = _SafetensorsReader(folder, stack)
        # Some exports drop the "model." prefix; map what the file has onto HF's canonical names.
        available = {
            (n if n.startswith(("model.", "lm_head.")) else "model." + n): n for n in reader.names()
        }
        expected = _hf_names_for(config)
        unexpected = sorted(
            n
            for n in available
            if n not in expected
            and not n.endswith(_IGNORED_SUFFIXES)
            and not (kept and n.endswith(SCALE_SUFFIXES))
            and not (n == "lm_head.weight" and config.tie_word_embeddings)
        )
        if unexpected:
            raise ValueError(
                f"{folder}: checkpoint has tensors jaxllm's {config.architecture} layout has no "
                f"place for: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            )
        missing = sorted(expected - set(available))
        if missing:
            raise ValueError(
                f"{folder}: checkpoint is missing tensors: "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}"
            )
        get = lambda n: reader.get(available[n])  # noqa: E731
        params = assemble_params(config, get, folder, placer, skip=frozenset(kept))
        if kept:
            config = _place_fp8(config, kept, get, available, params, placer, folder)

    tok = load_tokenizer(folder) if tokenizer else None
    return LoadedModel(
        config=config,
        params=params,
        tokenizer=tok,
        generation_config=read_generation_config(folder),
        source=folder,
        chat_template=getattr(tok, "chat_template", None) if tok is not None else None,
        format="hf",
    )
