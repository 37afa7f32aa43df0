"""The contract of a stage, on both sides of Ray.

A *stage* is the worker side: a plain object that Ray ships to its tasks, with a `name`,
the Ray resources one of its tasks needs, and `process(item)`, which turns one item (a
video, a shard's videos) into a result. A video that fails is part of the result (a row
with `status="failed"`, or an entry of the stats' `failed` map holding a
`VideoFailure.line`), never an exception: an exception means the stage itself broke.
`workers.task_pool` runs any stage over its items.

A *summary* is the driver side: what a stage's driver (or a whole job) returns to the
CLI, which prints its `progress_line` and `lines`, and exits with `--strict`'s code when
`failed_videos` is not zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from lofipipe.storage import Store

Item = TypeVar("Item", contravariant=True)
Result = TypeVar("Result", covariant=True)


class Stage(Protocol[Item, Result]):
    """Worker side: `process` runs once per item inside a Ray task."""

    @property
    def name(self) -> str:
        """Short and stable: it names the stage's Ray tasks."""

    @property
    def resources(self) -> Mapping[str, float]:
        """What one task needs from Ray, e.g. `{"num_cpus": 1}`."""

    def process(self, item: Item) -> Result:
        """One item's result, its failed videos recorded in it."""


class StageSummary(Protocol):
    """Driver side: what a stage (or the whole job) did, for a person to read."""

    @property
    def progress_line(self) -> str:
        """The progress bar's closing line (items, failures, rate); empty if no work."""

    @property
    def failed_videos(self) -> int:
        """Videos that failed in this stage (`--strict` fails the command on any)."""

    def lines(self, root: Store) -> list[str]:
        """The summary printed after the progress line."""
