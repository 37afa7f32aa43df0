"""Runs a stage's `process` over items as Ray tasks, each under a time limit.

Results come back as they finish. An item whose task runs past the limit is cancelled
(its worker process killed) and reported as a failure; so is one whose worker dies. Either
way the other items go on. A task that fails on storage (a full disk, refused access)
stops the whole map with that StorageError once the tasks in flight have ended: no other
item would fare better.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from lofipipe.errors import StorageError, VideoFailure, one_line
from lofipipe.schemas.stage import Stage
from lofipipe.workers.runtime import cluster_cpus


@ray.remote(max_retries=0)
def _run_stage(stage: Stage[Any, Any], item: Any) -> Any:
    return stage.process(item)


@ray.remote
def _ready() -> None:
    """A no-op that makes Ray start a worker, so timed tasks do not wait for one."""


@dataclass(frozen=True)
class TaskFailure:
    """Why an item's task produced no result."""

    reason: str  # timeout | worker_died | task_error | ray_error
    message: str

    @property
    def line(self) -> str:
        """The failure as tables keep it (`VideoFailure.line`)."""
        return VideoFailure(self.reason, self.message).line


def map_with_time_limit(
    stage: Stage[Any, Any], items: Sequence[Any], timeout_s: float | Callable[[Any], float]
) -> Iterator[tuple[Any, Any]]:
    """Yields `(item, result_or_TaskFailure)` in completion order.

    At most as many tasks are in flight as the stage's CPU request fits in the cluster, and
    the workers are started beforehand, so a submitted task starts at once and the limit,
    counted from submission, measures its run. `timeout_s` may depend on the item.
    """
    limit = timeout_s if callable(timeout_s) else lambda _: timeout_s
    cpus = float(stage.resources.get("num_cpus", 1))
    window = max(1, int(cluster_cpus() // max(cpus, 0.001)))
    ray.get([_ready.options(num_cpus=cpus).remote() for _ in range(min(window, len(items)))])
    remote = _run_stage.options(num_cpus=cpus, name=f"lofipipe.{stage.name}")
    stage_ref = ray.put(stage)
    pending = list(items)[::-1]
    running: dict[ray.ObjectRef, tuple[Any, float]] = {}
    stopped: StorageError | None = None
    while pending or running:
        while pending and len(running) < window:
            item = pending.pop()
            running[remote.remote(stage_ref, item)] = (item, time.monotonic() + limit(item))
        ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
        for ref in ready:
            item, _ = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as error:
                outcome = TaskFailure("worker_died", f"worker died: {one_line(error)}")
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, StorageError):
                    # The storage, not the item: nothing else would get further either.
                    # The tasks in flight end first (committing or removing what they
                    # staged), then the map stops.
                    stopped, pending = stopped or error.cause, []
                    continue
                outcome = TaskFailure("task_error", one_line(error, last=True))
            except ray.exceptions.RayError as error:  # out of memory, object lost, ...
                outcome = TaskFailure("ray_error", one_line(error, with_type=True))
            yield item, outcome
        now = time.monotonic()
        for ref, (item, deadline) in list(running.items()):
            if now > deadline:
                ray.cancel(ref, force=True)
                del running[ref]
                yield item, TaskFailure("timeout", f"timed out after {limit(item):.3g} s")
    if stopped is not None:
        raise stopped
