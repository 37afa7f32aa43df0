"""Runs a stage's `process` over items as Ray tasks, each under a time limit.

Results come back as they finish. An item whose task runs past the limit is cancelled
(its worker process killed) and reported as a failure; so is one whose worker dies. Either
way the other items go on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from lofipipe.workers.runtime import cluster_cpus


@ray.remote(max_retries=0)
def _run_stage(stage: Any, item: Any) -> Any:
    return stage.process(item)


@dataclass(frozen=True)
class TaskFailure:
    """Why an item's task produced no result."""

    reason: str  # timeout | worker_died | task_error
    message: str


def _one_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def map_with_time_limit(stage: Any, items: Sequence[Any], timeout_s: float
                        ) -> Iterator[tuple[Any, Any]]:
    """Yields `(item, result_or_TaskFailure)` in completion order.

    At most as many tasks are in flight as the stage's CPU request fits in the cluster, so a
    submitted task starts at once and the limit, counted from submission, measures its run.
    """
    cpus = float(getattr(stage, "resources", {}).get("num_cpus", 1))
    window = max(1, int(cluster_cpus() // max(cpus, 0.001)))
    remote = _run_stage.options(num_cpus=cpus)
    stage_ref = ray.put(stage)
    pending = list(items)[::-1]
    running: dict[ray.ObjectRef, tuple[Any, float]] = {}
    while pending or running:
        while pending and len(running) < window:
            item = pending.pop()
            running[remote.remote(stage_ref, item)] = (item, time.monotonic())
        ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
        for ref in ready:
            item, _ = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                continue
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as error:
                outcome = TaskFailure("worker_died", f"worker died: {_one_line(error)}")
            except ray.exceptions.RayTaskError as error:
                outcome = TaskFailure("task_error", _one_line(error))
            yield item, outcome
        now = time.monotonic()
        for ref, (item, submitted) in list(running.items()):
            if now - submitted > timeout_s:
                ray.cancel(ref, force=True)
                del running[ref]
                yield item, TaskFailure("timeout", f"timed out after {timeout_s:g} s")
