"""Model weights in every supported format -> `LoadedModel`: `load_model(model)` (dispatch.py).

One module per format: hf.py (Hugging Face safetensors folders), gguf.py (+ gguf_reader.py,
gguf_tokenizer.py), orbax.py (folders written by `jaxllm convert`), dummy.py (`dummy:NAME`).
Each fills the parameter layout its model declares (`jaxllm.models.layout`) and, with a mesh,
places it in the shardings of `jaxllm.parallel`. hub.py resolves Hugging Face hub ids (`org/name`)
to a snapshot in the local HF cache (downloaded when missing, unless HF_HUB_OFFLINE is set).
"""

from jaxllm.model_loader.dispatch import (
    ACCEPTED_FORMS,
    SMOLLM2_NAME,
    check_params,
    load_model,
    normalize_dtype,
    resolve_model,
    resolve_model_path,
    smollm2_gguf_path,
)
from jaxllm.model_loader.errors import ModelNotFoundError
from jaxllm.model_loader.loaded_model import LoadedModel

__all__ = [
    "ACCEPTED_FORMS",
    "SMOLLM2_NAME",
    "LoadedModel",
    "ModelNotFoundError",
    "check_params",
    "load_model",
    "normalize_dtype",
    "resolve_model",
    "resolve_model_path",
    "smollm2_gguf_path",
]
