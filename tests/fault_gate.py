"""The fault gate as tests use it (dmf_ray.platform.distributed.FAULT_GATE_ENV): wait, bounded, for
trials parked at it, kill one there, release the rest. Faults fire from the training's own
state (a checkpoint reported, the worker waiting), never from a race against the clock."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable


def wait_for(predicate: Callable[[], Any], timeout: float, poll: float = 0.1) -> Any:
    """Poll until predicate() is truthy (bounded); returns its value or None."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    return None


def parked(gate: Path, count: int = 1) -> list[Path]:
    """The rank-0 gate markers once ``count`` trials are parked at the gate (else empty)."""
    markers = sorted(gate.glob("*/checkpointed_rank0"))
    return markers if len(markers) >= count else []


def kill_first_parked(gate: Path, timeout: float = 240) -> tuple[threading.Thread, list[int]]:
    """A started thread that SIGKILLs the first process parked at the gate, then releases the
    gate; the list it returns gets the killed pid (empty if nothing parked within ``timeout``)."""
    killed: list[int] = []

    def kill() -> None:
        markers = wait_for(lambda: parked(gate), timeout=timeout)
        if markers:
            pid = int(markers[0].read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        (gate / "release").write_text("")

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread, killed
