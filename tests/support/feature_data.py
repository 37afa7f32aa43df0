"""A feature set written the way `lofipipe extract` writes one, with features that show
where each action is, so that a head can learn them in a few seconds."""

from __future__ import annotations

import json

import numpy as np

from lofipipe.layout import (
    ANNOTATIONS_PATH,
    feature_part_path,
    feature_stats_path,
    lineage_path,
)
from lofipipe.schemas.tables import ANNOTATIONS, FEATURES
from lofipipe.storage import Store

FINGERPRINT = "feedfacefeedface"
LABELS = ("jump", "run")


def write_feature_set(
    root: Store,
    videos: int = 8,
    snippets: int = 32,
    dim: int = 8,
    seed: int = 0,
    validation: int = 2,
) -> dict[str, list]:
    """`videos` videos of `snippets` 0.5-second snippets with one or two actions each; a
    feature channel per class is 1 inside its actions. Returns video_id -> segments."""
    rng = np.random.default_rng(seed)
    rows, annotations, truth = [], [], {}
    for index in range(videos):
        video_id = f"video_{index:03d}"
        values = rng.normal(0, 0.1, (snippets, dim)).astype(np.float32)
        start = np.arange(snippets) * 0.5
        segments = []
        for label in rng.permutation(len(LABELS))[: rng.integers(1, 3)]:
            length = int(rng.integers(3, 9))
            first = int(rng.integers(0, snippets - length))
            values[first : first + length, label] += 1.0
            segments.append((float(start[first]), float(start[first] + length * 0.5), int(label)))
        truth[video_id] = segments
        subset = "validation" if index >= videos - validation else "training"
        annotations += [
            {
                "video_id": video_id,
                "subset": subset,
                "label": LABELS[label],
                "label_id": label,
                "start": a,
                "end": b,
                "video_duration": snippets * 0.5,
                "source_format": "activitynet",
            }
            for a, b, label in segments
        ]
        rows.append(
            {
                "video_id": video_id,
                "encoder_fingerprint": FINGERPRINT,
                "num_snippets": snippets,
                "dim": dim,
                "values": values.ravel(),
                "snippet_start": start,
                "snippet_end": start + 0.5,
                "source_fingerprint": f"blake2b:{index}",
            }
        )
    root.write_table(ANNOTATIONS_PATH, ANNOTATIONS.from_rows(annotations))
    root.write_text(
        lineage_path(FINGERPRINT),
        json.dumps({"fingerprint": FINGERPRINT, "encoder": "test", "schedule": "demo"}),
    )
    for part, first in enumerate(range(0, videos, 4)):
        chunk = rows[first : first + 4]
        root.write_table(
            feature_part_path(FINGERPRINT, part), FEATURES.from_rows(chunk), row_group_size=1
        )
        root.write_text(
            feature_stats_path(FINGERPRINT, part),
            json.dumps(
                {
                    "part": part,
                    "videos": [r["video_id"] for r in chunk],
                    "failed": {},
                    "source_fingerprints": {},
                }
            ),
        )
    return truth
