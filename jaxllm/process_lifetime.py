"""Child processes that end with their parent (Linux's parent-death signal).

A process started by a test, a sweep or a server outlives its parent when the parent is killed
(SIGKILL, or SIGTERM without a handler) and keeps its memory: a worker of several GiB left behind
by an interrupted test run, a benchmark point still running after its sweep was stopped.
`kill_with_parent` as `subprocess.Popen(..., preexec_fn=kill_with_parent)` prevents that.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["kill_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def kill_with_parent() -> None:
    """`preexec_fn` for subprocess.Popen: the child receives SIGKILL when the thread that started
    it exits (so when the parent process ends, however it ends). Start the child from a thread
    that outlives it (the main thread, or the one that waits for it). A no-op outside Linux."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
