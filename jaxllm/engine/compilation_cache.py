"""JAX's persistent compilation cache, on by default in a user folder (overridable)."""

from __future__ import annotations

import os

import jax

ENV_VAR = "JAXLLM_COMPILATION_CACHE_DIR"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxllm", "xla")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn the cache on at `path` (else $JAXLLM_COMPILATION_CACHE_DIR, else the user folder).

    The value "off" (argument or variable) leaves it off. Returns the folder in use, or None.
    """
    path = path or os.environ.get(ENV_VAR) or default_cache_dir()
    if path == "off":
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:  # already set, by us or by the user's own code: keep theirs
        return current
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
