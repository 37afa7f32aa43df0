"""A trivial detector to measure a trained head against: it never looks at a video, only at
the training set's class frequencies and mean action lengths."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from lofipipe.data.annotations import AnnotationIndex
from lofipipe.evaluation.detection import DetectionResult, Segment, evaluate
from lofipipe.evaluation.ground_truth import ground_truth


def class_prior_baseline(
    training: Iterable[Segment], spans: Mapping[str, tuple[float, float]]
) -> list[Segment]:
    """For every video and class, segments of the class's mean training length every half
    length across the video's span, scored by the class's share of training actions."""
    lengths: dict[str, list[float]] = defaultdict(list)
    for segment in training:
        lengths[segment.label].append(segment.end - segment.start)
    total = sum(len(v) for v in lengths.values())
    out = []
    for video_id, (first, last) in spans.items():
        for label, values in sorted(lengths.items()):
            length = min(float(np.mean(values)), last - first)
            starts = np.arange(first, last - length + 1e-9, length / 2)
            out += [
                Segment(video_id, label, float(s), float(s + length), len(values) / total)
                for s in starts
            ]
    return out


def baseline_result(
    annotations: AnnotationIndex,
    train_videos: Sequence[str],
    val_videos: Sequence[str],
    thresholds: Sequence[float],
) -> DetectionResult:
    """The baseline's scores on `val_videos`, with its priors from `train_videos`."""
    spans = {video: (0.0, annotations.durations[video]) for video in val_videos}
    predictions = class_prior_baseline(ground_truth(annotations, train_videos), spans)
    return evaluate(ground_truth(annotations, val_videos), predictions, thresholds)
