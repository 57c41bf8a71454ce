"""The HF tokenizer of a GGUF file, built without torch.

`AutoTokenizer.from_pretrained(folder, gguf_file=...)` does three things: read the file's
`tokenizer.*` metadata, turn it into a `tokenizers.Tokenizer` (transformers'
`integrations/gguf/gguf_tokenizer_mapping.convert_gguf_tokenizer`), and wrap that in the tokenizer
class registered for the model type, passing the special tokens, `add_bos_token`/`add_eos_token`
and the chat template as init kwargs. Only the first step needs torch there (transformers' own GGUF
reader imports it), so this module reads the metadata with `gguf.GGUFReader` and does the other two
steps with transformers' torch-free pieces, which keeps the result the same as transformers'.

Host-side: imports neither jax nor torch.
"""

from __future__ import annotations

import os
from typing import Any

from jaxllm.model_loader.gguf_reader import open_gguf

# tokenizer.ggml.model values that are SentencePiece vocabularies for which llama.cpp adds BOS
# unless the file says otherwise (transformers defaults `add_bos_token` to True for them).
_SPM_DEFAULT_BOS = ("llama",)
# Special-token attribute -> metadata key suffix under `tokenizer.ggml.`.
_SPECIAL_IDS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def _plain(value: Any) -> Any:
    """numpy scalars/lists from GGUFReader -> plain Python values (ints, floats, bools, strs)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def read_tokenizer_metadata(reader: Any) -> dict[str, Any]:
    """`general.architecture` and every `tokenizer.*` field as plain Python values."""
    return {
        key: _plain(field.contents())
        for key, field in reader.fields.items()
        if key.startswith("tokenizer.") or key == "general.architecture"
    }


def tokenizer_inputs(metadata: dict[str, Any], path: str) -> tuple[str, dict, dict]:
    """(architecture, converter input, tokenizer init kwargs) from GGUF metadata.

    The converter input uses transformers' names for the `tokenizer.ggml.*` fields
    (`tokens`, `merges`, `token_type`, ...); the init kwargs hold the special tokens as strings
    (None where the file names no id), `chat_template` and `add_bos_token`/`add_eos_token`.
    """
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING

    arch = metadata.get("general.architecture")
    if arch is None:
        raise ValueError(f"{path}: GGUF metadata lacks general.architecture")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ValueError(f"{path}: GGUF metadata has no tokenizer.ggml.tokens vocabulary")
    groups = {
        group: {
            name: metadata[f"tokenizer.{key}"]
            for key, name in renames.items()
            if f"tokenizer.{key}" in metadata
        }
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    vocab_spec, init_kwargs = groups["tokenizer"], groups["tokenizer_config"]

    kind = vocab_spec.get("tokenizer_type")
    if kind in _SPM_DEFAULT_BOS:
        init_kwargs.setdefault("add_bos_token", True)
    elif kind == "gemma4":  # its chat template writes <bos> itself; transformers adds none
        init_kwargs["add_bos_token"] = False

    for attr, key in _SPECIAL_IDS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and not 0 <= int(token_id) < len(tokens):
            raise ValueError(
                f"{path}: tokenizer.ggml.{key} = {token_id} is outside the "
                f"vocabulary of {len(tokens)} tokens"
            )
        init_kwargs[attr] = None if token_id is None else tokens[int(token_id)]
    return str(arch), vocab_spec, init_kwargs


def _tokenizer_class(arch: str) -> type:
    """The class AutoTokenizer picks for a GGUF of this architecture (via its config's model type,
    which is the GGUF architecture for llama and qwen2)."""
    from transformers import TokenizersBackend
    from transformers.models.auto.tokenization_auto import (
        TOKENIZER_MAPPING_NAMES,
        tokenizer_class_from_name,
    )

    name = TOKENIZER_MAPPING_NAMES.get(arch)
    if name in (
        None,
        "TokenizersBackend",
        "PythonBackend",
        "PreTrainedTokenizerFast",
        "MistralCommonBackend",
    ):  # a bare GGUF has no mistral-common files
        return TokenizersBackend
    return tokenizer_class_from_name(name) or TokenizersBackend


def _load_with_auto_tokenizer(path: str, reader: Any) -> tuple[Any, str | None]:

    from transformers import AutoTokenizer

    folder, name = os.path.split(os.path.abspath(path))
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as e:  # noqa: BLE001 - name the file and the cause
        raise ValueError(f"{path}: cannot build the tokenizer: {e}") from e
    return tok, getattr(tok, "chat_template", None)


def load_gguf_tokenizer(path: str, reader: Any = None) -> tuple[Any, str | None]:
    """(HF tokenizer, chat template or None) for a GGUF file, equal to what
    `AutoTokenizer.from_pretrained(dirname, gguf_file=basename)` gives, but without torch.

    reader: an already open `gguf.GGUFReader` of `path` (saves parsing the file twice).
    """
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    except ImportError:  # other transformers releases: their own (torch-needing) GGUF path
        return _load_with_auto_tokenizer(path, reader)

    if reader is None:
        reader = open_gguf(path)
    metadata = read_tokenizer_metadata(reader)
    arch, vocab_spec, init_kwargs = tokenizer_inputs(metadata, path)
    try:
        backend, extra = convert_gguf_tokenizer(arch, vocab_spec)
        cls = _tokenizer_class(arch)
        tok = cls(tokenizer_object=backend, name_or_path=path, **init_kwargs, **extra)
    except Exception as e:  # the converter fails with KeyError/TypeError on malformed metadata
        raise ValueError(
            f"{path}: cannot build the tokenizer from GGUF metadata: {type(e).__name__}: {e}"
        ) from e
    return tok, init_kwargs.get("chat_template")
