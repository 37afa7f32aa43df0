"""Fault injection for tests: killing a Ray Train worker process once a run is under way,
or a driver process at a chosen point."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def worker_pids(title: bytes) -> set[int]:
    """Processes on this machine whose title holds `title` (Ray names its workers after
    the task or actor they run: ray::RayTrainWorker, ray::lofipipe.materialize, ...)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if title in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def train_worker_pids() -> set[int]:
    """Processes of Ray Train workers on this machine."""
    return worker_pids(b"RayTrainWorker")


def kill_a_train_worker_when(path: Path, alive, earlier: set[int], timeout: float = 120) -> int:
    """Waits for `path` (e.g. a checkpoint) to appear while `alive()` holds, then kills one
    of the run's training workers (those not among the `earlier` ones, which may belong
    to runs still shutting down) with SIGKILL; returns how many the run had."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline and alive(), f"{path} never appeared"
        time.sleep(0.05)
    victims = train_worker_pids() - earlier
    assert victims, "no Ray Train worker to kill"
    os.kill(min(victims), signal.SIGKILL)
    return len(victims)


def kill_when(process, ready, timeout: float = 300, kill=None) -> bool:
    """As soon as `ready()` holds, SIGKILLs `process` (or calls `kill()` instead, which
    kills something else and leaves the process running); returns False if the process
    ended first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if ready():
            if kill is not None:
                kill()
                return True
            process.kill()
            process.wait()
            return True
        assert time.monotonic() < deadline, "timed out waiting to kill the driver"
        time.sleep(0.05)
    return False
