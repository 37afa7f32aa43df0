"""The manifest under ROOT (`manifest/videos.parquet`): its rows, the videos that probed
fine, and how they are grouped into shards (and feature parts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lofipipe.errors import InputError
from lofipipe.layout import MANIFEST_PATH
from lofipipe.schemas.tables import MANIFEST
from lofipipe.storage import Store


@dataclass(frozen=True)
class SourceVideo:
    """What decoding needs of a manifest row."""

    video_id: str
    uri: str
    fingerprint: str
    start_time: float
    duration: float


def manifest_rows(root: Store) -> dict[str, dict[str, Any]]:
    """The manifest's rows by video_id (empty before the first ingest)."""
    if not root.exists(MANIFEST_PATH):
        return {}
    table = MANIFEST.check(root.read_table(MANIFEST_PATH), root.url_of(MANIFEST_PATH))
    return {row["video_id"]: row for row in table.to_pylist()}


def ok_videos(root: Store) -> list[SourceVideo]:
    """The manifest's ok videos, sorted by id."""
    if not root.exists(MANIFEST_PATH):
        raise InputError(f"no manifest at {root.url_of(MANIFEST_PATH)}: run lofipipe ingest first")
    rows = manifest_rows(root).values()
    return sorted(
        (
            SourceVideo(r["video_id"], r["uri"], r["fingerprint"], r["start_time"], r["duration"])
            for r in rows
            if r["status"] == "ok"
        ),
        key=lambda video: video.video_id,
    )


def shard_groups(videos: list[SourceVideo], videos_per_shard: int) -> list[tuple[SourceVideo, ...]]:
    """The videos of each shard index: `videos_per_shard` at a time in the given (video_id)
    order. Feature parts follow the same groups, whether read from shards or decoded."""
    return [
        tuple(videos[first : first + videos_per_shard])
        for first in range(0, len(videos), videos_per_shard)
    ]
