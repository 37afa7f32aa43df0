"""The normalized annotations under ROOT, indexed by video: label names, subsets, and
each video's segments in seconds."""

from __future__ import annotations

import numpy as np

from lofipipe.layout import ANNOTATIONS_PATH
from lofipipe.schemas.tables import ANNOTATIONS
from lofipipe.storage import Store

_EMPTY = (np.zeros((0, 2), np.float64), np.zeros(0, np.int64))


class AnnotationIndex:
    """`ROOT/annotations.parquet` read once (empty when ingest had no annotations)."""

    def __init__(self, root: Store):
        rows = (
            ANNOTATIONS.check(
                root.read_table(ANNOTATIONS_PATH), root.url_of(ANNOTATIONS_PATH)
            ).to_pylist()
            if root.exists(ANNOTATIONS_PATH)
            else []
        )
        names = {row["label_id"]: row["label"] for row in rows}
        self.label_names = [names.get(i, str(i)) for i in range(max(names, default=-1) + 1)]
        self.subsets: dict[str, str] = {}
        self.durations: dict[str, float] = {}
        grouped: dict[str, list[dict]] = {}
        for row in rows:
            self.subsets[row["video_id"]] = row["subset"]
            self.durations[row["video_id"]] = max(
                row["video_duration"] or row["end"], self.durations.get(row["video_id"], 0.0)
            )
            grouped.setdefault(row["video_id"], []).append(row)
        self._segments = {
            video_id: (
                np.array([[r["start"], r["end"]] for r in group], np.float64),
                np.array([r["label_id"] for r in group], np.int64),
            )
            for video_id, group in grouped.items()
        }

    def videos(self, subset: str) -> list[str]:
        """The annotated videos of `subset`, sorted."""
        return sorted(v for v, name in self.subsets.items() if name == subset)

    def segments(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """[N, 2] seconds and [N] label ids of one video's actions."""
        return self._segments.get(video_id, _EMPTY)
