"""Opening a GGUF file with `gguf.GGUFReader`, with errors that name the file.

Host-side (imports neither jax nor torch): the weight loader (gguf.py) and the tokenizer
(gguf_tokenizer.py) both open files through it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from jaxllm.model_loader.errors import ModelNotFoundError


@functools.cache
def _plain_view_reader() -> type:
    """`gguf.GGUFReader` whose file map is a plain ndarray view of its `np.memmap`.

    The reader slices the map once or twice per metadata value, and each slice of an `np.memmap`
    subclass pays for `__array_finalize__`: a 262k-token vocabulary (Gemma 3) took 10 s to parse,
    2.5x longer than through a plain view of the same mapping (still mapped, not read into RAM).
    """
    import numpy as np
    from gguf import GGUFReader

    class PlainViewReader(GGUFReader):
        @property
        def data(self) -> Any:
            return self._plain

        @data.setter
        def data(self, value: Any) -> None:
            self._plain = value.view(np.ndarray)

    return PlainViewReader


def open_gguf(path: str) -> Any:
    GGUFReader = _plain_view_reader()

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
