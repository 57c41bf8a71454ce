"""jaxllm.process_lifetime.kill_with_parent: a child started with it dies when its parent is
killed with SIGKILL (the case where no cleanup code of the parent runs); one started without it
is left behind (the control)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jaxllm.process_lifetime import kill_with_parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

_PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from jaxllm.process_lifetime import kill_with_parent
    guarded = sys.argv[1] == "1"
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        preexec_fn=kill_with_parent if guarded else None,
    )
    print(child.pid, flush=True)
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped) counts as gone
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _child_after_parent_killed(guarded: bool) -> int:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, "1" if guarded else "0"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=kill_with_parent,
    )
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    return child


def test_a_guarded_child_dies_with_its_killed_parent():
    child = _child_after_parent_killed(guarded=True)
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_an_unguarded_child_outlives_its_killed_parent():
    child = _child_after_parent_killed(guarded=False)
    try:
        time.sleep(0.5)
        assert _alive(child)
    finally:
        os.kill(child, signal.SIGKILL)
