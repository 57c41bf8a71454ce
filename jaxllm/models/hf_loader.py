"""Load a Hugging Face checkpoint folder into jaxllm's parameter pytree.

The folder holds `config.json`, the weights as one `model.safetensors` or shards listed in
`model.safetensors.index.json`, optionally `generation_config.json` and tokenizer files.

This module also owns the parameter layout shared by every loader: `param_layout(config)` names
each leaf, its HF tensor name and its shape. Layers are stacked along a leading axis L and linear
kernels are stored [in, out], the transpose of HF's `nn.Linear.weight` [out, in].
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.models.registry import check_architecture

logger = logging.getLogger(__name__)

HOST_DTYPES: dict[str, Any] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(jnp.bfloat16),  # ml_dtypes' bfloat16, usable by numpy
}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# Tensors some checkpoints carry that hold nothing jaxllm needs.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class ModelNotFoundError(FileNotFoundError, ValueError):
    """A model file or folder is missing (caught as either FileNotFoundError or ValueError)."""


@dataclass(frozen=True)
class ParamSpec:
    """One leaf of the parameter pytree and where it comes from in an HF checkpoint."""

    path: tuple[str, ...]  # keys into the params dict
    hf_name: str  # HF tensor name; contains "{i}" for per-layer tensors
    shape: tuple[int, ...]  # jaxllm shape (with the leading L for per-layer tensors)
    transpose: bool  # True for linear kernels: jaxllm [in, out] = HF [out, in].T

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf_name

    @property
    def hf_shape(self) -> tuple[int, ...]:
        """Shape of one HF tensor (one layer for stacked leaves)."""
        shape = self.shape[1:] if self.stacked else self.shape
        return tuple(reversed(shape)) if self.transpose else shape


def param_layout(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter leaf of the Llama-family model for `config`, in a fixed order."""
    if config.mlp_bias:
        raise ValueError("mlp_bias=True is not supported by jaxllm's Llama-family model")
    L, D, V, F = (
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
        config.intermediate_size,
    )
    Q = config.num_attention_heads * config.head_dim
    K = config.num_key_value_heads * config.head_dim

    def layer(path: tuple[str, ...], hf: str, shape: tuple[int, ...], transpose: bool) -> ParamSpec:
        return ParamSpec(("layers",) + path, "model.layers.{i}." + hf, (L,) + shape, transpose)

    specs = [
        ParamSpec(("embed_tokens", "embedding"), "model.embed_tokens.weight", (V, D), False),
        layer(("input_layernorm", "scale"), "input_layernorm.weight", (D,), False),
        layer(("self_attn", "q_proj", "kernel"), "self_attn.q_proj.weight", (D, Q), True),
        layer(("self_attn", "k_proj", "kernel"), "self_attn.k_proj.weight", (D, K), True),
        layer(("self_attn", "v_proj", "kernel"), "self_attn.v_proj.weight", (D, K), True),
        layer(("self_attn", "o_proj", "kernel"), "self_attn.o_proj.weight", (Q, D), True),
        layer(
            ("post_attention_layernorm", "scale"), "post_attention_layernorm.weight", (D,), False
        ),
        layer(("mlp", "gate_proj", "kernel"), "mlp.gate_proj.weight", (D, F), True),
        layer(("mlp", "up_proj", "kernel"), "mlp.up_proj.weight", (D, F), True),
        layer(("mlp", "down_proj", "kernel"), "mlp.down_proj.weight", (F, D), True),
        ParamSpec(("norm", "scale"), "model.norm.weight", (D,), False),
    ]
    if config.attention_bias:
        for proj, width in (("q_proj", Q), ("k_proj", K), ("v_proj", K)):
            specs.append(
                layer(("self_attn", proj, "bias"), f"self_attn.{proj}.bias", (width,), False)
            )
    if not config.tie_word_embeddings:
        specs.append(ParamSpec(("lm_head", "kernel"), "lm_head.weight", (D, V), True))
    return specs


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def param_shapes(config: ModelConfig, dtype: str | None = None) -> dict:
    """The parameter pytree as `jax.ShapeDtypeStruct` leaves (dtype defaults to config.dtype)."""
    dt = jnp.dtype(dtype or config.dtype)
    tree: dict = {}
    for spec in param_layout(config):
        set_path(tree, spec.path, jax.ShapeDtypeStruct(spec.shape, dt))
    return tree


def assemble_params(
    config: ModelConfig,
    get_tensor: Callable[[str], np.ndarray],
    source: str,
    placer: Callable[[ModelConfig], Callable[[ParamSpec, np.ndarray], jax.Array]] | None = None,
) -> dict:
    """Build the device pytree in `config.dtype` from HF-named tensors.

    `get_tensor(hf_name)` returns one tensor in HF layout (linear weights [out, in]); any float
    dtype. Per-layer tensors are stacked into one host buffer per leaf, then put on the device:
    by `placer(config)(spec, buf)` when given (e.g. `jaxllm.parallel.host_placer`, straight into
    the shards of a mesh), else `jax.device_put(buf)`.
    """
    place = placer(config) if placer is not None else (lambda spec, buf: jax.device_put(buf))
    host_dtype = HOST_DTYPES[config.dtype]
    params: dict = {}
    for spec in param_layout(config):
        buf = np.empty(spec.shape, host_dtype)
        names = (
            [spec.hf_name.format(i=i) for i in range(config.num_hidden_layers)]
            if spec.stacked
            else [spec.hf_name]
        )
        for i, name in enumerate(names):
            t = get_tensor(name)
            if tuple(t.shape) != spec.hf_shape:
                raise ValueError(
                    f"{source}: tensor {name!r} has shape {tuple(t.shape)}, "
                    f"expected {spec.hf_shape} from the model config"
                )
            t = t.T if spec.transpose else t
            if spec.stacked:
                buf[i] = t
            else:
                buf[...] = t
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
            if handle.get_slice(name).get_dtype() == "BF16":
                return self._get_bf16(fname, name)
            return handle.get_tensor(name)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"{path}: cannot read tensor {name!r}: {e}") from e

    def _get_bf16(self, fname: str, name: str) -> np.ndarray:
        # numpy has no bfloat16, so safetensors' numpy API refuses it: read the bytes ourselves.
        path = self._paths[fname]
        if fname not in self._headers:
            self._headers[fname] = _read_header(path)
        header, data_start = self._headers[fname]
        info = header[name]
        start, end = info["data_offsets"]
        raw = np.fromfile(
            path, dtype=np.uint16, count=(end - start) // 2, offset=data_start + start
        )
        return raw.view(HOST_DTYPES["bfloat16"]).reshape(info["shape"])

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


def _hf_names_for(config: ModelConfig) -> set[str]:
    names = set()
    for spec in param_layout(config):
        if spec.stacked:
            names.update(spec.hf_name.format(i=i) for i in range(config.num_hidden_layers))
        else:
            names.add(spec.hf_name)
    return names


def load_hf(folder: str, dtype: str | None = None, tokenizer: bool = True, placer=None):
    """Load an HF folder; dtype None means the checkpoint's own dtype. Returns a LoadedModel.

    `placer`: see `assemble_params` (None: each leaf to the default device)."""
    from jaxllm.models.loader import LoadedModel

    folder = os.path.abspath(folder)
    hf = read_hf_config(folder)
    config = config_from_hf(hf, dtype or checkpoint_dtype(hf), os.path.join(folder, "config.json"))

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
        params = assemble_params(config, lambda n: reader.get(available[n]), folder, placer)

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
