"""Recall of temporal segments, the two published ways beside detection mAP (detection.py).

ActivityNet proposal average recall, AR@AN, as the official code computes it
(activitynet/ActivityNet `Evaluation/eval_proposal.py`, `average_recall_vs_avg_nr_proposals`):
labels play no part, and every ground-truth segment is an instance (duplicates kept).
- The videos are those with ground truth (N of them). The proposal budget is AN_max (100)
  per video: with P proposals given, each video keeps the top floor(n * AN_max * N / P)
  of its n proposals (at most n), ranked by score in the official code's tie order (numpy
  `argsort` reversed). P counts every proposal given, also those of videos without
  ground truth, as the official code counts its whole proposal file.
- The curve has 100 points. At point j each video takes the top
  floor(k * j/100 * AN_max * N / K) of its k kept proposals (K kept in all), about
  j/100 * AN_max per video on average: the point's AN (1, 2, ..., 100 for AN_max 100).
- Recall at a point and threshold is the fraction of instances that a taken proposal of
  their video covers with tIoU >= the threshold; AR is its mean over the thresholds.
- AUC is the trapezoidal area under AR over AN, from the first point (AN 1) to AN_max,
  divided by AN_max: a fraction here, which ActivityNet prints times 100 as a percentage
  ("Area Under the AR vs AN curve: x%"). Recall 1 at every point gives 0.99, not 1.

Ego4D moment queries Recall@kx, as the Ego4D baseline's evaluation computes it
(EGO4D/episodic-memory `MQ/Evaluation/ego4d/get_retrieval_performance.py`), class-aware:
for each video and each class with n ground-truth instances there, the class's
predictions in that video are ranked by score and the top k * n taken; an instance is
retrieved when one of them overlaps it with tIoU strictly above the threshold (the
official `overlap > t`); recall is retrieved instances over all instances, pooled over
classes and videos. Equal scores keep the file's order (the official code reads its file
in order, written sorted by score). Not OpenTAD's `compute_topkx_recall_detection`
(opentad/evaluations/mAP.py), which counts tIoU >= the threshold and averages recall per
class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from lofipipe.errors import ConfigError
from lofipipe.evaluation.detection import ANET_TIOU, Segment, segment_iou, threshold_key

AR_AN = (1, 5, 10, 100)  # the AN that proposal papers report (BSN, BMN on ActivityNet-1.3)
EGO4D_TIOU = (0.1, 0.3, 0.5)  # Ego4D MQ's headline figure is Recall@1x at tIoU 0.5
EGO4D_KX = (1, 5)
_POINTS = 100  # eval_proposal.py's grid: 1/100, 2/100, ..., 100/100 of AN_max
_NONE = np.iinfo(np.int64).max  # the rank of "no ranked segment covers it"


@dataclass
class AverageRecallResult:
    """ActivityNet's AR-AN curve: recall at each threshold and average number of proposals."""

    thresholds: tuple[float, ...]
    proposals_per_video: np.ndarray  # the AN of each point of the curve
    recall: np.ndarray  # (thresholds, points)
    videos: int = 0  # videos with ground truth
    instances: int = 0  # ground-truth segments
    proposals: int = 0  # all proposals given: the budget's P

    @property
    def average_recall(self) -> np.ndarray:
        """AR at each point: recall averaged over the thresholds."""
        return self.recall.mean(axis=0)

    @property
    def auc(self) -> float:
        """Area under the AR-AN curve over the largest AN (a fraction; ActivityNet's % / 100)."""
        return area_under_curve(self.proposals_per_video, self.average_recall)

    def at(self, an: float) -> np.ndarray:
        """Recall at each threshold at average number `an` (a point of the curve)."""
        found = np.flatnonzero(np.isclose(self.proposals_per_video, an))
        if not len(found):
            raise ValueError(f"AN {an:g} is not a point of the curve")
        return self.recall[:, found[0]]

    def to_dict(self, points: Sequence[float] = AR_AN) -> dict:
        """`{"AR": {"1": x, ...}, "AUC": y, "recall": {"0.50": {"1": z, ...}, ...}}`."""
        at = {f"{an:g}": self.at(an) for an in points}
        return {
            "AR": {an: float(values.mean()) for an, values in at.items()},
            "AUC": self.auc,
            "recall": {
                threshold_key(t): {an: float(values[i]) for an, values in at.items()}
                for i, t in enumerate(self.thresholds)
            },
            "max_proposals_per_video": float(self.proposals_per_video[-1]),
            "videos": self.videos,
            "instances": self.instances,
            "proposals": self.proposals,
        }

    def table(self, points: Sequence[float] = AR_AN) -> str:
        """Recall (%) per threshold at each AN, AR (their average) and the AUC."""
        at = np.stack([self.at(an) for an in points], axis=1)  # (thresholds, points)
        heads = "".join(f"  {f'AR@{an:g}':>6}" for an in points)
        lines = [f"{'tIoU':>6}{heads}"]
        lines += [
            f"{threshold_key(t):>6}" + "".join(f"  {100 * v:6.2f}" for v in row)
            for t, row in zip(self.thresholds, at, strict=True)
        ]
        lines.append(f"{'avg':>6}" + "".join(f"  {100 * v:6.2f}" for v in at.mean(axis=0)))
        lines.append(f"{'AUC':>6}  {100 * self.auc:6.2f}")
        return "\n".join(lines)


@dataclass
class RecallAtKxResult:
    """Ego4D's Recall@kx at each tIoU threshold and each k."""

    thresholds: tuple[float, ...]
    multipliers: tuple[int, ...]  # the k of Recall@kx
    recall: np.ndarray  # (thresholds, multipliers)
    videos: int = 0  # videos with ground truth
    instances: int = 0
    predictions: int = 0
    ignored: int = 0  # predictions of labels absent from the ground truth

    def to_dict(self) -> dict:
        """`{"recall": {"1x": {"0.50": x, ...}, "5x": {...}}, ...}`."""
        return {
            "recall": {
                f"{k}x": {
                    threshold_key(t): float(self.recall[i, j])
                    for i, t in enumerate(self.thresholds)
                }
                for j, k in enumerate(self.multipliers)
            },
            "videos": self.videos,
            "instances": self.instances,
            "predictions": self.predictions,
            "ignored_predictions": self.ignored,
        }

    def table(self) -> str:
        """Recall@kx (%) per threshold, one k a column."""
        lines = [f"{'tIoU':>6}" + "".join(f"  {f'R@{k}x':>6}" for k in self.multipliers)]
        lines += [
            f"{threshold_key(t):>6}" + "".join(f"  {100 * v:6.2f}" for v in row)
            for t, row in zip(self.thresholds, self.recall, strict=True)
        ]
        return "\n".join(lines)


def parse_multipliers(text: str) -> tuple[int, ...]:
    """The k of Recall@kx: a comma list of positive integers, e.g. `1,5`."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"Recall@kx: expected a comma list of positive integers, got {text!r}")
    return values


def area_under_curve(an: np.ndarray, ar: np.ndarray) -> float:
    """Trapezoidal area under AR over AN divided by the largest AN, as eval_proposal.py
    normalises it (a fraction: it prints 100 times this)."""
    if len(an) < 2:
        return 0.0
    return float(np.sum(np.diff(an) * (ar[1:] + ar[:-1]) / 2) / an[-1])


def _spans(segments: Sequence[Segment]) -> np.ndarray:
    return np.array([(s.start, s.end) for s in segments], np.float64).reshape(-1, 2)


def _first_hits(
    truth: np.ndarray, ranked: np.ndarray, thresholds: np.ndarray, strict: bool
) -> np.ndarray:
    """(thresholds, truth): the rank of the first `ranked` span that covers each truth span
    at each threshold (tIoU >= it, or > it when `strict`); `_NONE` where none does."""
    if not len(ranked):
        return np.full((len(thresholds), len(truth)), _NONE)
    iou = segment_iou(truth[:, None, :], ranked)  # (truth, ranked)
    limit = thresholds[:, None, None]
    hit = iou > limit if strict else iou >= limit
    return np.where(hit.any(axis=2), hit.argmax(axis=2), _NONE)


def average_recall(
    truth: Iterable[Segment],
    proposals: Iterable[Segment],
    thresholds: Sequence[float] = ANET_TIOU,
    max_proposals: float = 100,
) -> AverageRecallResult:
    """ActivityNet's average recall of `proposals` (labels ignored) at 100 average numbers
    of proposals per video, up to `max_proposals`; see the module doc.

    Proposals keep their given order for the official tie handling.
    """
    truth, proposals = list(truth), list(proposals)
    of_video: dict[str, list[Segment]] = {}
    for segment in truth:
        of_video.setdefault(segment.video_id, []).append(segment)
    limits = np.asarray(thresholds, np.float64)
    return AverageRecallResult(
        tuple(thresholds),
        np.arange(1, _POINTS + 1) / _POINTS * max_proposals,
        _recall_curve(of_video, proposals, limits, max_proposals),
        len(of_video),
        len(truth),
        len(proposals),
    )


def _recall_curve(
    of_video: dict[str, list[Segment]],
    proposals: list[Segment],
    thresholds: np.ndarray,
    max_proposals: float,
) -> np.ndarray:
    """(thresholds, points): recall of the ground truth `of_video` along the AN grid."""
    recall = np.zeros((len(thresholds), _POINTS))
    if not of_video or not proposals:
        return recall
    proposed: dict[str, list[Segment]] = {}
    for segment in proposals:
        proposed.setdefault(segment.video_id, []).append(segment)
    # The arithmetic follows eval_proposal.py operation by operation, so that floor() of a
    # product decides the same count on a boundary.
    ratio = max_proposals * len(of_video) / len(proposals)
    firsts, kept = [], []
    for video_id, segments in of_video.items():
        candidates = proposed.get(video_id, [])
        scores = np.array([p.score for p in candidates], np.float64)
        ranked = _spans(candidates)[scores.argsort()[::-1]]  # the official tie order
        keep = min(int(len(ranked) * ratio), len(ranked))
        firsts.append(_first_hits(_spans(segments), ranked[:keep], thresholds, strict=False))
        kept.append(keep)
    if not sum(kept):
        return recall
    fractions = np.arange(1, _POINTS + 1) / 100.0 * (max_proposals * len(of_video) / sum(kept))
    budget = np.array(kept)[:, None]
    taken = np.minimum((budget * fractions).astype(int), budget)  # (videos, points)
    taken = np.repeat(taken, [len(s) for s in of_video.values()], axis=0)  # (instances, points)
    first = np.concatenate(firsts, axis=1)  # (thresholds, instances)
    return (first[:, :, None] < taken[None]).sum(axis=1) / first.shape[1]


def recall_at_kx(
    truth: Iterable[Segment],
    predictions: Iterable[Segment],
    thresholds: Sequence[float] = EGO4D_TIOU,
    multipliers: Sequence[int] = EGO4D_KX,
) -> RecallAtKxResult:
    """Ego4D moment queries' Recall@kx of `predictions` at each threshold and k; see the
    module doc. Predictions of labels or videos without ground truth change nothing."""
    truth, predictions = list(truth), list(predictions)
    instances: dict[tuple[str, str], list[Segment]] = {}
    for segment in truth:
        instances.setdefault((segment.video_id, segment.label), []).append(segment)
    ranked: dict[tuple[str, str], list[Segment]] = {}
    scores = np.array([p.score for p in predictions], np.float64)
    for index in np.argsort(-scores, kind="stable"):  # equal scores keep the file's order
        p = predictions[index]
        if (p.video_id, p.label) in instances:
            ranked.setdefault((p.video_id, p.label), []).append(p)
    limits = np.asarray(thresholds, np.float64)
    ks = np.asarray(multipliers, np.int64)
    retrieved = np.zeros((len(limits), len(ks)), np.int64)
    for key, segments in instances.items():
        n = len(segments)
        top = _spans(ranked.get(key, [])[: int(ks.max()) * n])
        first = _first_hits(_spans(segments), top, limits, strict=True)
        retrieved += (first[:, :, None] < ks * n).sum(axis=1)
    labels = {segment.label for segment in truth}
    return RecallAtKxResult(
        tuple(thresholds),
        tuple(int(k) for k in ks),
        retrieved / len(truth) if truth else np.zeros(retrieved.shape),
        len({segment.video_id for segment in truth}),
        len(truth),
        len(predictions),
        sum(p.label not in labels for p in predictions),
    )
