"""Each stage invocation that did work leaves one record under `ROOT/_lofipipe/stages/`:
how many videos and snippets it processed, how many failed, and its wall time. The run
report shows each stage's throughput from them; a stage resumed after a crash adds its
record to those of the invocations before it, so the totals cover all of its work.

One small JSON file per invocation (never a shared file rewritten), so concurrent
commands on one ROOT cannot lose each other's records.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from lofipipe.layout import STAGES_DIR
from lofipipe.storage import Store


@dataclass
class StageTotals:
    stage: str
    invocations: int = 0
    videos: int = 0
    snippets: int = 0
    failed: int = 0
    seconds: float = 0.0

    def rate(self, count: int) -> float | None:
        return count / self.seconds if self.seconds > 0 and count else None


def record_stage(
    root: Store, stage: str, seconds: float, videos: int, snippets: int = 0, failed: int = 0
) -> None:
    """Adds one invocation's record (nothing when it processed nothing)."""
    if not videos and not failed:
        return
    record = {
        "stage": stage,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": seconds,
        "videos": videos,
        "snippets": snippets,
        "failed": failed,
    }
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"  # sorts in time order
    root.write_text(f"{STAGES_DIR}/{name}", json.dumps(record))


def stage_totals(root: Store) -> list[StageTotals]:
    """Every stage's records summed, in the order the stages first ran."""
    totals: dict[str, StageTotals] = {}
    for name in sorted(root.list(STAGES_DIR, pattern="*.json")):
        record = json.loads(root.read_text(name))
        total = totals.setdefault(record["stage"], StageTotals(record["stage"]))
        total.invocations += 1
        for key in ("videos", "snippets", "failed", "seconds"):
            setattr(total, key, getattr(total, key) + record[key])
    return list(totals.values())
