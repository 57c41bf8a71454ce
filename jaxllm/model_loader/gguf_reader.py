"""Opening a GGUF file with `gguf.GGUFReader`, with errors that name the file.

Host-side (imports neither jax nor torch): the weight loader (gguf.py) and the tokenizer
(gguf_tokenizer.py) both open files through it.
"""

from __future__ import annotations

import os
from typing import Any

from jaxllm.model_loader.errors import ModelNotFoundError


def open_gguf(path: str) -> Any:
    from gguf import GGUFReader

    if not os.path.isfile(path):
        raise ModelNotFoundError(f"{path}: GGUF file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (magic bytes {magic!r}, expected b'GGUF')")
    try:
        return GGUFReader(path)
    except Exception as e:  # the reader fails with reshape/index errors on short files
        raise ValueError(
            f"{path}: not a readable GGUF file (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
