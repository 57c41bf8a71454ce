"""The models a server answers to: its base model's served names and its LoRA adapters (vLLM's
OpenAIServingModels).

Each adapter is a model of /v1/models (`parent`: its base model) that a request chooses with
`model=NAME`; the request then runs with the adapter's `LoRARequest`. Adapters come from
`--lora-modules` (loaded before the server starts serving: a bad one stops the start) and, when
runtime updating is allowed (`JAXLLM_ALLOW_RUNTIME_LORA_UPDATING` or vLLM's
`VLLM_ALLOW_RUNTIME_LORA_UPDATING`), from /v1/load_lora_adapter; /v1/unload_lora_adapter drops
one. Every adapter gets the next integer id, never reused: a request still queued with an
unloaded adapter keeps its id, and prefix-cache keys stay apart. Loading reads the folder on the
engine's LoRA loader thread (AsyncLLMEngine.add_lora), never on the event loop.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any

from jaxllm.entrypoints.openai.errors import OpenAIError, bad_request, model_not_found
from jaxllm.lora import LoRARequest

logger = logging.getLogger(__name__)

__all__ = ["RUNTIME_LORA_ENV", "ServingModels", "runtime_lora_updating"]

# the first is jaxllm's, the second vLLM's (so a vLLM deployment's environment works unchanged)
RUNTIME_LORA_ENV = ("JAXLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_ALLOW_RUNTIME_LORA_UPDATING")
_TRUE = frozenset({"1", "true", "yes", "on"})


def runtime_lora_updating(environ: Any = os.environ) -> bool:
    """Whether the environment allows loading and unloading adapters over HTTP (an
    authorization risk: anyone who can reach the server can make it read folders)."""
    return any(environ.get(k, "").strip().lower() in _TRUE for k in RUNTIME_LORA_ENV)


class ServingModels:
    """Served base-model names and LoRA adapters by name. `lora_enabled`: the engine serves
    adapters (else every adapter operation is a 400 saying how to enable them)."""

    def __init__(self, base_names: Sequence[str], lora_enabled: bool = False) -> None:
        self.base_names = list(base_names)
        self.lora_enabled = lora_enabled
        self.loras: dict[str, LoRARequest] = {}  # name -> adapter, in load order
        self._loading: set[str] = set()  # names being loaded now
        self._ids = itertools.count(1)

    @property
    def names(self) -> list[str]:
        return self.base_names + list(self.loras)

    def resolve(self, name: str | None) -> tuple[str, LoRARequest | None]:
        """The name to report and the adapter a request with `model=name` runs with (None: the
        base model); 404 for a model this server does not serve."""
        if name is None or name == "":
            return self.base_names[0], None
        if name in self.base_names:
            return name, None
        lora = self.loras.get(name)
        if lora is None:
            raise model_not_found(name, self.names)
        return name, lora

    def new_request(self, name: str, path: str, base_model_name: str | None = None) -> LoRARequest:
        """The adapter's request with the next id; 400 when the name cannot be taken."""
        self._require_lora()
        if not name:
            raise bad_request("'lora_name' must not be empty.", "lora_name")
        if not path:
            raise bad_request("'lora_path' must not be empty.", "lora_path")
        if name in self.base_names:
            raise bad_request(
                f"The name '{name}' is the base model's: give the adapter another name.",
                "lora_name",
            )
        if name in self.loras or name in self._loading:
            raise bad_request(
                f"The LoRA adapter '{name}' has already been loaded.",
                "lora_name",
                code="lora_adapter_exists",
            )
        return LoRARequest(
            name, next(self._ids), path, base_model_name=base_model_name or self.base_names[0]
        )

    def _require_lora(self) -> None:
        if not self.lora_enabled:
            raise bad_request(
                "LoRA adapters are not enabled on this server: start it with --enable-lora.",
                "lora_name",
            )

    def add_static(self, engine: Any, modules: Sequence[Any]) -> None:
        """Load `--lora-modules` (LoRAModulePath) into `engine` (an LLMEngine whose loop is not
        running yet); ValueError naming the first adapter that cannot load."""
        for m in modules:
            try:
                request = self.new_request(m.name, m.path, m.base_model_name)
            except OpenAIError as e:
                raise ValueError(f"--lora-modules {m.name}: {e.message}") from None
            engine.add_lora(request)
            self.loras[m.name] = request
            logger.info("LoRA adapter %r (id %d) from %s", m.name, request.lora_int_id, m.path)

    async def load(self, engine: Any, name: str, path: str) -> LoRARequest:
        """Load an adapter through `engine` (an AsyncLLMEngine) and serve it as `name`. 400 for a
        taken name or an adapter that cannot load (the engine's message names the problem)."""
        request = self.new_request(name, path)
        self._loading.add(name)
        try:
            await engine.add_lora(request)
        except ValueError as e:
            raise bad_request(str(e), "lora_path", code="invalid_lora_adapter") from None
        finally:
            self._loading.discard(name)
        self.loras[name] = request
        logger.info("loaded LoRA adapter %r (id %d) from %s", name, request.lora_int_id, path)
        return request

    async def unload(self, engine: Any, name: str, lora_int_id: int | None = None) -> None:
        """Stop serving the adapter `name` (requests already running with it finish); 404 for
        an adapter this server does not serve."""
        self._require_lora()
        request = self.loras.get(name)
        if request is None or (lora_int_id is not None and lora_int_id != request.lora_int_id):
            raise OpenAIError(
                404,
                f"The LoRA adapter '{name}' cannot be found"
                + (f" with lora_int_id {lora_int_id}" if request is not None else "")
                + f" (loaded adapters: {', '.join(self.loras) or 'none'}).",
                param="lora_name",
                code="lora_adapter_not_found",
            )
        del self.loras[name]  # new requests for it get a 404 from here on
        await engine.remove_lora(request.lora_int_id)
        logger.info("unloaded LoRA adapter %r (id %d)", name, request.lora_int_id)
