"""Containing the videos that crash or hang the decoder.

A shard task writes a small journal before it decodes each video, naming the video it is
on. When the task's worker process dies (a decoder crash, or a kill from outside) or the
task runs past its time limit (the worker is then killed), the driver submits the shard
again, with the failure. The new attempt reads the journal and blames the video the last
one was on; a video blamed `max_attempts` times is quarantined: recorded as failed, with
the reason, in the shard's stats, and never decoded again. The journal goes just before the
shard commits (and a run clears those of committed shards), so `--retry-failed` gives
quarantined videos a fresh start.

Each failed attempt either blames a video or finds no journal (it died before its first
video), so `attempt_bound` attempts always suffice: there is no endless retry loop.

    ROOT/_lofipipe/journal/materialize/part-NNNNN.json   {"current", "blamed", "failures"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lofipipe.layout import JOURNAL_DIR, JOURNAL_PATTERN, journal_path, part_number
from lofipipe.storage import Store


def forget_journals(root: Store, keep: set[int]) -> None:
    """Removes the journals of shards other than `keep` (those still to write): shards
    committed, or gone, by a run that was killed before it could clean up."""
    for name in root.list(JOURNAL_DIR, pattern=JOURNAL_PATTERN):
        if part_number(name) not in keep:
            root.remove(name)


def attempt_bound(videos: int, max_attempts: int) -> int:
    """How many attempts a shard of `videos` gets: enough to quarantine every video, plus
    one that commits, plus one for a death before the first video."""
    return videos * max_attempts + 2


@dataclass
class ShardJournal:
    root: Store
    shard: int
    current: str | None = None  # the video being decoded
    blamed: dict[str, int] = field(default_factory=dict)  # attempts that died on it
    failures: dict[str, str] = field(default_factory=dict)  # the last failure on it

    @classmethod
    def resume(cls, root: Store, shard: int, last_failure: str) -> ShardJournal:
        """The journal as the previous attempt left it, with its video blamed for
        `last_failure`. Without one (the first attempt of this run: an earlier run's
        driver may have been killed, which is no video's fault) nobody new is blamed."""
        journal = cls(root, shard)
        if root.exists(journal_path(shard)):
            saved = json.loads(root.read_text(journal_path(shard)))
            journal.blamed, journal.failures = saved["blamed"], saved["failures"]
            if last_failure and saved["current"] is not None:
                video = saved["current"]
                journal.blamed[video] = journal.blamed.get(video, 0) + 1
                journal.failures[video] = last_failure
        return journal

    def quarantined(self, video_id: str, max_attempts: int) -> str | None:
        """The failure line of a video to skip, or None."""
        count = self.blamed.get(video_id, 0)
        if count < max_attempts:
            return None
        return (
            f"quarantined: the decoder died or hung on it in {count} attempts "
            f"(last: {self.failures.get(video_id, 'unknown')})"
        )

    def start(self, video_id: str) -> None:
        self.current = video_id
        self.root.write_text(
            journal_path(self.shard),
            json.dumps({"current": video_id, "blamed": self.blamed, "failures": self.failures}),
        )

    def close(self) -> None:
        """The shard committed: nothing is left to blame."""
        self.root.remove(journal_path(self.shard))
