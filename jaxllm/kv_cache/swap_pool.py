"""Host-memory block ids for KV swapped out of the device (preemption_mode="swap").

The pool only hands out ids; the model runner keeps the bytes (jaxllm/engine/kv_swap.py), one
host block per device block, `swap_space` GiB in all. Free ids are handed out lowest first
(a FIFO of freed ids after the initial ones), so tests can name them exactly.

Host side only: no JAX here.
"""

from __future__ import annotations

from collections import deque


def num_host_blocks(swap_space_gib: float, bytes_per_block: int) -> int:
    """How many KV blocks of `bytes_per_block` fit in `swap_space_gib` GiB of host memory."""
    if bytes_per_block < 1:
        raise ValueError(f"bytes_per_block must be >= 1, got {bytes_per_block}")
    if not swap_space_gib >= 0:
        raise ValueError(f"swap_space must be >= 0 GiB, got {swap_space_gib}")
    return int(swap_space_gib * 2**30 // bytes_per_block)


class HostSwapPool:
    """`num_blocks` host block ids, 0 .. num_blocks - 1, all free at first."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 0:
            raise ValueError(f"number of host swap blocks must be >= 0, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._used: set[int] = set()

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """n host block ids, or None (nothing taken) when fewer than n are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} host blocks")
        if n > len(self._free):
            return None
        ids = [self._free.popleft() for _ in range(n)]
        self._used.update(ids)
        return ids

    def free(self, ids: list[int]) -> None:
        """Give host blocks back; they are handed out again after those already free."""
        for i in ids:
            if i not in self._used:
                raise ValueError(f"host block {i} is not in use and cannot be freed")
            self._used.remove(i)
            self._free.append(i)

    def get_free_block_ids(self) -> list[int]:
        """In the order they will be handed out (for tests)."""
        return list(self._free)
