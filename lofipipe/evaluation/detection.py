"""Mean average precision of temporal detections, as the ActivityNet detection protocol
computes it.

For each class, predictions are ranked by score. Walking down the ranking, a prediction
takes the ground-truth segment of its video and class with the highest tIoU that no
higher-ranked prediction holds yet; if the best free segment is below the threshold (or
there is none), the prediction is a false positive. A second detection of a segment is
therefore a false positive. Precision is made monotone from the right and integrated
over the recall steps. A class's AP is 0 without predictions; mAP is the mean over the
classes of the ground truth. Ties keep the protocol's own numpy `argsort` order, so
results match the official evaluation code on the same input order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lofipipe.errors import ConfigError

# Thresholds exactly as the official code computes them (numpy's linspace, unrounded: its
# 0.8999999999999999 is not 0.9, which decides a tIoU of 14.4 / 16), shown to 2 decimals.
ANET_TIOU = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))  # ActivityNet-1.3
THUMOS_TIOU = tuple(float(t) for t in np.linspace(0.3, 0.7, 5))  # THUMOS-14 (ActionFormer)


@dataclass(frozen=True)
class Segment:
    """One ground-truth or predicted action instance (seconds)."""

    video_id: str
    label: str
    start: float
    end: float
    score: float = 1.0


@dataclass
class DetectionResult:
    thresholds: tuple[float, ...]
    per_class: dict[str, np.ndarray]  # label -> AP at each threshold
    ignored: int = 0  # predictions of labels absent from the ground truth
    videos: int = 0  # ground-truth videos
    instances: int = 0  # ground-truth segments
    predictions: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def mAP(self) -> np.ndarray:  # noqa: N802 - the field's name in the literature
        if not self.per_class:
            return np.zeros(len(self.thresholds))
        return np.mean(np.stack(list(self.per_class.values())), axis=0)

    @property
    def average_mAP(self) -> float:  # noqa: N802
        return float(self.mAP.mean())

    def to_dict(self) -> dict:
        """`{"average_mAP": x, "mAP": {"0.50": y, ...}, "per_class": {label: {...}}}`."""
        keys = [threshold_key(t) for t in self.thresholds]
        return {
            "average_mAP": self.average_mAP,
            "mAP": dict(zip(keys, map(float, self.mAP), strict=True)),
            "per_class": {
                label: {
                    "average_AP": float(ap.mean()),
                    "AP": dict(zip(keys, map(float, ap), strict=True)),
                }
                for label, ap in sorted(self.per_class.items())
            },
            "videos": self.videos,
            "instances": self.instances,
            "predictions": self.predictions,
            "ignored_predictions": self.ignored,
        }

    def table(self, per_class: bool = False) -> str:
        """The mAP per threshold and their average as aligned text."""
        lines = [map_table(self.thresholds, self.mAP)]
        if per_class:
            width = max((len(label) for label in self.per_class), default=5)
            lines.append("")
            lines.append(f"{'class':<{width}}  {'avg AP':>6}")
            lines += [
                f"{label:<{width}}  {100 * ap.mean():6.2f}"
                for label, ap in sorted(self.per_class.items())
            ]
        return "\n".join(lines)


def map_table(thresholds: Sequence[float], values: Sequence[float]) -> str:
    """mAP (%) per threshold and their average, one per line."""
    lines = [f"{'tIoU':>6}  {'mAP':>6}"]
    lines += [
        f"{threshold_key(t):>6}  {100 * v:6.2f}" for t, v in zip(thresholds, values, strict=True)
    ]
    lines.append(f"{'avg':>6}  {100 * float(np.mean(values)):6.2f}")
    return "\n".join(lines)


def threshold_key(threshold: float) -> str:
    return f"{threshold:.2f}"


def parse_thresholds(text: str) -> tuple[float, ...]:
    """`start:stop:step` (stop included, spaced as numpy's linspace, like the official
    evaluation code) or a comma-separated list of tIoU thresholds."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            values = tuple(np.linspace(start, stop, count))
        else:
            values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"tIoU thresholds: expected start:stop:step or a comma list of numbers, got {text!r}"
        ) from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise ConfigError(f"tIoU thresholds must lie in (0, 1], got {text!r}")
    return tuple(float(v) for v in values)


def segment_iou(segment: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Temporal IoU of [start, end] pairs (the last axis), broadcast: one segment (2,)
    against (N, 2) candidates gives (N,), (M, 1, 2) against (N, 2) gives (M, N)."""
    inter = (
        np.minimum(segment[..., 1], candidates[..., 1])
        - np.maximum(segment[..., 0], candidates[..., 0])
    ).clip(0)
    union = (candidates[..., 1] - candidates[..., 0]) + (segment[..., 1] - segment[..., 0]) - inter
    return inter / union


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision-recall curve made monotone from the right."""
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def class_ap(
    truth: Sequence[Segment], predictions: Sequence[Segment], thresholds: Sequence[float]
) -> np.ndarray:
    """AP of one class at each threshold (0 where there are no predictions)."""
    ap = np.zeros(len(thresholds))
    if not predictions or not truth:
        return ap
    by_video: dict[str, list[int]] = {}
    for index, segment in enumerate(truth):
        by_video.setdefault(segment.video_id, []).append(index)
    spans = np.array([[s.start, s.end] for s in truth], np.float64)
    taken = np.full((len(thresholds), len(truth)), -1)
    scores = np.array([p.score for p in predictions], np.float64)
    order = scores.argsort()[::-1]  # the protocol's own tie order; see the module doc
    tp = np.zeros((len(thresholds), len(predictions)))
    fp = np.zeros((len(thresholds), len(predictions)))
    for rank, index in enumerate(order):
        prediction = predictions[index]
        candidates = by_video.get(prediction.video_id)
        if candidates is None:
            fp[:, rank] = 1
            continue
        ious = segment_iou(np.array([prediction.start, prediction.end]), spans[candidates])
        best_first = ious.argsort()[::-1]
        for t, threshold in enumerate(thresholds):
            for j in best_first:
                if ious[j] < threshold:
                    break
                if taken[t, candidates[j]] >= 0:
                    continue
                tp[t, rank] = 1
                taken[t, candidates[j]] = rank
                break
            fp[t, rank] = 1 - tp[t, rank]
    tp, fp = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    recall = tp / len(truth)
    precision = tp / (tp + fp)
    return np.array([interpolated_ap(precision[t], recall[t]) for t in range(len(thresholds))])


def evaluate(
    truth: Iterable[Segment],
    predictions: Iterable[Segment],
    thresholds: Sequence[float] = ANET_TIOU,
) -> DetectionResult:
    """mAP of `predictions` against `truth` at each tIoU threshold, and AP per class.

    Predictions keep their given order for the protocol's tie handling; those of labels
    the ground truth does not have are counted in `ignored` and change no AP.
    """
    truth, predictions = list(truth), list(predictions)
    labels = sorted({segment.label for segment in truth})
    truth_of = {label: [] for label in labels}
    predicted = {label: [] for label in labels}
    for segment in truth:
        truth_of[segment.label].append(segment)
    ignored = 0
    for segment in predictions:
        if segment.label in predicted:
            predicted[segment.label].append(segment)
        else:
            ignored += 1
    per_class = {label: class_ap(truth_of[label], predicted[label], thresholds) for label in labels}
    return DetectionResult(
        tuple(thresholds),
        per_class,
        ignored,
        len({s.video_id for s in truth}),
        len(truth),
        len(predictions),
    )
