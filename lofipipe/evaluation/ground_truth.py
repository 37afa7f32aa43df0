"""Ground truth for evaluation from the annotations under ROOT."""

from __future__ import annotations

from collections.abc import Sequence

from lofipipe.data.annotations import AnnotationIndex
from lofipipe.evaluation.detection import Segment


def ground_truth(annotations: AnnotationIndex, video_ids: Sequence[str]) -> list[Segment]:
    """The annotated actions of these videos, as segments with label names."""
    out = []
    for video_id in video_ids:
        spans, labels = annotations.segments(video_id)
        out += [
            Segment(video_id, annotations.label_names[label], float(a), float(b))
            for (a, b), label in zip(spans, labels, strict=True)
        ]
    return out
