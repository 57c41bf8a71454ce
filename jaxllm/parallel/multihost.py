"""Multi-host runs: one controller process per host over `jax.distributed`, in lockstep.

Every process builds the same `LLM` (same model, same -tp): the mesh spans all hosts' devices,
each process loads only the weight shards of its own devices, and every jitted step runs on all
processes together (JAX's multi-controller SPMD). Process 0 (the leader) alone runs the scheduler
and the user's code: before each model-runner call it broadcasts that call's inputs (the
scheduler's output and the sampling rows, pickled) to the followers, which replay the same
`dispatch` in `follow()`; the sampled tokens come back replicated, so the leader reads them
locally (also with asynchronous scheduling: the tokens a step feeds to the next stay replicated on
every process's devices).

    # on every host (flags or JAXLLM_COORDINATOR_ADDRESS / JAXLLM_NUM_PROCESSES / JAXLLM_PROCESS_ID)
    from jaxllm.parallel import multihost
    multihost.initialize("10.0.0.1:1234", num_processes=2, process_id=RANK)
    llm = LLM(model, tensor_parallel_size=16)       # 2 hosts x 8 GPUs
    if multihost.is_leader():
        outputs = llm.generate(prompts)
        multihost.stop_followers()
    else:
        multihost.follow(llm.llm_engine)           # returns when the leader stops

The engine's hooks (`lead`) are installed by `LLM` when `jax.process_count() > 1`. The command
line does the same: `jaxllm generate --coordinator-address HOST:PORT --num-processes N
--process-id I ...` on every host (jaxllm/entrypoints/cli.py).
"""

from __future__ import annotations

import os
import pickle
import threading
from typing import Any

import jax
import numpy as np

COORDINATOR_ENV = "JAXLLM_COORDINATOR_ADDRESS"  # host:port of process 0
NUM_PROCESSES_ENV = "JAXLLM_NUM_PROCESSES"
PROCESS_ID_ENV = "JAXLLM_PROCESS_ID"

_EXECUTE, _BLOCKS, _STOP = "execute", "blocks", "stop"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """`jax.distributed.initialize` from the arguments, else the JAXLLM_* environment variables,
    else JAX's own detection (JAX_COORDINATOR_ADDRESS, SLURM, ...). On the CPU, selects gloo
    collectives (cross-process all-reduce over TCP). Call before anything touches a device."""
    address = coordinator_address or os.environ.get(COORDINATOR_ENV)
    if num_processes is None and os.environ.get(NUM_PROCESSES_ENV):
        num_processes = int(os.environ[NUM_PROCESSES_ENV])
    if process_id is None and os.environ.get(PROCESS_ID_ENV):
        process_id = int(os.environ[PROCESS_ID_ENV])
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is outside [0, {num_processes})")
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms.startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes, process_id)


def is_leader() -> bool:
    return jax.process_index() == 0


def broadcast_object(obj: Any = None) -> Any:
    """Process 0's `obj` on every process (pickled; two collective broadcasts)."""
    from jax.experimental import multihost_utils

    payload = np.frombuffer(pickle.dumps(obj), np.uint8) if is_leader() else None
    size = int(
        multihost_utils.broadcast_one_to_all(
            np.array([0 if payload is None else payload.size], np.int64)
        )[0]
    )
    buf = payload if payload is not None else np.zeros(size, np.uint8)
    data = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return pickle.loads(data.tobytes()) if not is_leader() else obj


def lead(engine: Any) -> None:
    """On process 0: make `engine`'s model-runner calls broadcast their inputs first."""
    runner = engine.runner
    mover = getattr(runner, "block_mover", None)
    real_dispatch = runner.dispatch
    state = threading.local()

    def dispatch(sched, rows, prompt_logprobs):
        broadcast_object((_EXECUTE, sched, rows, prompt_logprobs))
        state.inside = True  # block ops inside dispatch are replayed by the followers' dispatch
        try:
            return real_dispatch(sched, rows, prompt_logprobs)
        finally:
            state.inside = False

    runner.dispatch = dispatch
    if mover is not None:
        real_apply = mover.apply

        def apply(kv_cache, sched):
            if not getattr(state, "inside", False):
                broadcast_object((_BLOCKS, sched))
            return real_apply(kv_cache, sched)

        mover.apply = apply


def follow(engine: Any) -> int:
    """On processes > 0: replay the leader's runner calls until it stops; returns the number of
    steps run."""
    if is_leader():
        raise ValueError("follow() runs on processes other than 0; process 0 leads")
    runner = engine.runner
    steps = 0
    while True:
        msg = broadcast_object()
        if msg[0] == _STOP:
            return steps
        if msg[0] == _EXECUTE:  # the leader resolves; followers only keep the device state going
            runner.dispatch(*msg[1:])
            steps += 1
        elif msg[0] == _BLOCKS:
            runner.kv_cache = runner.block_mover.apply(runner.kv_cache, msg[1])


def stop_followers() -> None:
    """On process 0: release the followers from `follow()`."""
    if not is_leader():
        raise ValueError("stop_followers() runs on process 0")
    broadcast_object((_STOP,))
