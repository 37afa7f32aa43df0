"""Progress of long work: items done, rate and failures on one live line, then a summary."""

from __future__ import annotations

import sys
import time
from collections import Counter

from tqdm import tqdm


class Progress:
    """Counts items as they finish, by outcome, and shows them with their rate.

    Use as a context manager; `done(failed_reason=None)` once per item.
    """

    def __init__(self, label: str, total: int, unit: str = "video"):
        self.label, self.total, self.unit = label, total, unit
        self.failures: Counter[str] = Counter()
        self.ok = 0
        self.started = time.monotonic()
        self._bar = tqdm(
            total=total,
            desc=label,
            unit=unit,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
            disable=not total,
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self._bar.close()

    def done(self, failed_reason: str | None = None, count: int = 1) -> None:
        if failed_reason:
            self.failures[failed_reason] += count
        else:
            self.ok += count
        self._bar.update(count)
        if self.failures:
            self._bar.set_postfix(failed=self.failed, refresh=False)

    def write(self, line: str) -> None:
        """Prints a line above the bar."""
        self._bar.write(line, file=sys.stderr)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def summary(self) -> str:
        """`label: 9 ok, 2 failed (timeout 1, not_a_video 1) in 3.2 s (3.4 video/s)`."""
        failed = self.failed
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.failures.items()))
        rate = (self.ok + failed) / self.seconds if self.seconds > 0 else 0.0
        text = f"{self.label}: {self.ok} ok, {failed} failed"
        if reasons:
            text += f" ({reasons})"
        return text + f" in {self.seconds:.1f} s ({rate:.1f} {self.unit}/s)"
