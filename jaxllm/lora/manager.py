"""`LoRAManager`: which adapters are loaded on the host, and which sit in which device slot.

Host side: adapters are read from their folders (`peft_adapter.load_peft_adapter`) into an LRU of
`max_cpu_loras` (the least recently used one not on the device is dropped when it overflows).
`prefetch` reads one on a background thread, so that the server and `add_request` rarely wait
for the disk on the engine loop; `ensure_loaded` waits for it (or reads it) and raises the
adapter's error as a ValueError.

Device side: `activate(ids)` before each step gives every adapter of the step a slot of the
`AdapterTable`, keeping those already there, filling free slots, then evicting the least recently
used slot that this step does not need. The scheduler keeps at most `max_loras` distinct adapters
running, so a step's adapters always fit.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from jaxllm.lora.adapter_table import AdapterTable
from jaxllm.lora.config import LoRAConfig
from jaxllm.lora.peft_adapter import LoRAAdapter, load_peft_adapter
from jaxllm.lora.request import LoRARequest


class LoRAManager:
    def __init__(
        self, config: LoRAConfig, model_config: Any, sharding: Any = None, dtype: Any = None
    ) -> None:
        if getattr(model_config, "is_moe", False):
            raise ValueError("LoRA adapters are not supported for mixture-of-experts models")
        self.config = config
        self.model_config = model_config
        self.table = AdapterTable(
            model_config, config.max_loras, config.max_lora_rank, dtype, sharding
        )
        self._lock = threading.Lock()
        self._loaded: OrderedDict[int, LoRAAdapter] = OrderedDict()  # host LRU, newest last
        self._requests: dict[int, LoRARequest] = {}  # id -> its adapter, while registered
        # every adapter a request was queued with: one dropped from the host (LRU, or
        # remove_adapter) while its requests wait is read again for them
        self._known: dict[int, LoRARequest] = {}
        self._pending: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-load")
        self._slot_ids: list[int | None] = [None] * config.max_loras  # slot -> adapter id
        self._slot_used = [0] * config.max_loras  # slot -> last step it served
        self._tick = itertools.count(1)
        self.num_slot_writes = 0

    # ----- host side --------------------------------------------------------------------------
    def _load(self, request: LoRARequest) -> LoRAAdapter:
        return load_peft_adapter(
            request.lora_path,
            request.lora_name,
            request.lora_int_id,
            self.model_config,
            self.config.max_lora_rank,
        )

    def _check_same(self, request: LoRARequest) -> None:
        known = self._requests.get(request.lora_int_id)
        if known is not None and (known.lora_name, known.lora_path) != (
            request.lora_name,
            request.lora_path,
        ):
            raise ValueError(
                f"LoRA id {request.lora_int_id} is already {known.lora_name!r} "
                f"({known.lora_path!r}); give {request.lora_name!r} another lora_int_id"
            )

    def prefetch(self, request: LoRARequest) -> Future:
        """Start reading the adapter on the loader thread (done at once when already loaded)."""
        lid = request.lora_int_id
        with self._lock:
            self._check_same(request)
            self._requests.setdefault(lid, request)
            self._known[lid] = request
            fut = self._pending.get(lid)
            if fut is None:
                if lid in self._loaded:
                    fut = Future()
                    fut.set_result(self._loaded[lid])
                    return fut
                fut = self._pool.submit(self._load, request)
                self._pending[lid] = fut
        return fut

    def ensure_loaded(self, request: LoRARequest) -> LoRAAdapter:
        """The adapter, read now or by an earlier `prefetch`; ValueError when it cannot load (the
        adapter is then not registered)."""
        lid = request.lora_int_id
        fut = self.prefetch(request)
        try:
            adapter = fut.result()
        except Exception as e:
            with self._lock:
                if self._pending.get(lid) is fut:
                    del self._pending[lid]
                if lid not in self._loaded:
                    self._requests.pop(lid, None)
                    self._known.pop(lid, None)
            if isinstance(e, ValueError):
                raise
            # unreadable files: a clear error naming the adapter
            raise ValueError(f"LoRA adapter {request.lora_name!r} failed to load: {e}") from e
        with self._lock:
            if self._pending.get(lid) is fut:
                del self._pending[lid]
            self._loaded[lid] = adapter
            self._loaded.move_to_end(lid)
            self._evict_host()
        return adapter

    def _evict_host(self) -> None:
        on_device = {i for i in self._slot_ids if i is not None}
        while len(self._loaded) > self.config.num_cpu_loras:
            victim = next((i for i in self._loaded if i not in on_device), None)
            if victim is None:
                break
            del self._loaded[victim]

    def remove_adapter(self, lora_int_id: int) -> bool:
        """Unregister an adapter: it leaves `list_adapters` and new requests must load it again.
        Requests already queued with it run to the end with it (its device slot is reused only
        when no step needs it; dropped from the host, it is read again for them)."""
        with self._lock:
            found = self._requests.pop(lora_int_id, None) is not None
            if lora_int_id not in self._slot_ids:
                self._loaded.pop(lora_int_id, None)
        return found

    def list_adapters(self) -> dict[int, LoRARequest]:
        with self._lock:
            return {i: r for i, r in self._requests.items() if i in self._loaded}

    # ----- device side ------------------------------------------------------------------------
    def activate(self, lora_ids: Iterable[int]) -> dict[int, int]:
        """Slots for the adapters of one step (ids > 0), writing the ones not on the device into
        free or least recently used slots. Returns id -> slot."""
        wanted = list(dict.fromkeys(i for i in lora_ids if i))
        if len(wanted) > self.config.max_loras:
            raise ValueError(
                f"{len(wanted)} LoRA adapters in one step, more than max_loras "
                f"({self.config.max_loras})"
            )
        tick = next(self._tick)
        slots: dict[int, int] = {}
        for i in wanted:
            if i in self._slot_ids:
                slots[i] = self._slot_ids.index(i)
        for i in wanted:
            if i in slots:
                continue
            adapter = self._loaded.get(i)
            if adapter is None:  # dropped from the host LRU (or removed) while queued
                request = self._known.get(i)
                if request is None:
                    raise ValueError(f"LoRA adapter id {i} is not loaded")
                adapter = self.ensure_loaded(request)
            taken = set(slots.values())
            free = [s for s in range(self.config.max_loras) if s not in taken]
            slot = min(free, key=lambda s: (self._slot_ids[s] is not None, self._slot_used[s]))
            self.table.write(slot, adapter)
            self.num_slot_writes += 1
            self._slot_ids[slot] = i
            slots[i] = slot
        for s in slots.values():
            self._slot_used[s] = tick
        return slots
