"""From the TAL head's per-point outputs to scored action segments: the most confident
points of every level become candidate segments, Gaussian soft-NMS (Bodla et al., 2017)
decays the scores of overlapping candidates of the same class, and the best are kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lofipipe.models.tal_head import HeadOutput, point_positions


@dataclass(frozen=True)
class PostProcessing:
    """ActionFormer's inference defaults."""

    pre_nms_threshold: float = 0.001  # candidates below this score are dropped
    pre_nms_topk: int = 2000  # candidates per level
    sigma: float = 0.5  # Gaussian soft-NMS
    min_score: float = 0.001  # after decay
    max_segments: int = 100  # per video (ActivityNet's evaluation reads up to 100)
    min_length: float = 0.05  # in input snippets


def soft_nms(
    segments: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    sigma: float,
    min_score: float,
    max_segments: int,
) -> tuple[np.ndarray, ...]:
    """Class-wise Gaussian soft-NMS: repeatedly keep the best candidate and multiply each
    remaining candidate of its class by exp(-tIoU^2 / sigma).

    Returns the kept (segments [M, 2], scores [M], labels [M]), best first.
    """
    scores = scores.astype(np.float64).copy()
    alive = scores >= min_score
    kept: list[int] = []
    while alive.any() and len(kept) < max_segments:
        best = int(np.flatnonzero(alive)[np.argmax(scores[alive])])
        kept.append(best)
        alive[best] = False
        same = np.flatnonzero(alive & (labels == labels[best]))
        if len(same):
            inter = (
                np.minimum(segments[best, 1], segments[same, 1])
                - np.maximum(segments[best, 0], segments[same, 0])
            ).clip(0)
            union = (
                (segments[same, 1] - segments[same, 0])
                + (segments[best, 1] - segments[best, 0])
                - inter
            )
            iou = inter / np.maximum(union, 1e-8)
            scores[same] *= np.exp(-(iou**2) / sigma)
            alive[same] = scores[same] >= min_score
    index = np.array(kept, dtype=np.int64)
    return segments[index], scores[index], labels[index]


def detect(
    output: HeadOutput, item: int, length: int, settings: PostProcessing = PostProcessing()
) -> tuple[np.ndarray, ...]:
    """Segments (in input snippet units, clipped to the span of the snippets: [-0.5,
    length - 0.5] around their centers), scores and labels
    of batch item `item`, whose first `length` snippets are real, best first."""
    segments, scores, labels = [], [], []
    for logits, offsets, mask, stride in zip(
        output.logits, output.offsets, output.masks, output.strides, strict=True
    ):
        valid = mask[item]
        probability = torch.sigmoid(logits[item].float())[valid]  # [T_l, K]
        distance = offsets[item].float()[valid]
        positions = point_positions(len(mask[item]), stride, logits.device)[valid]
        flat = probability.flatten()
        keep = torch.nonzero(flat > settings.pre_nms_threshold).flatten()
        if len(keep) > settings.pre_nms_topk:
            keep = keep[flat[keep].topk(settings.pre_nms_topk).indices]
        point, label = keep // probability.shape[1], keep % probability.shape[1]
        start = positions[point] - distance[point, 0] * stride
        end = positions[point] + distance[point, 1] * stride
        segments.append(torch.stack([start, end], dim=1))
        scores.append(flat[keep])
        labels.append(label)
    segments = torch.cat(segments).clamp(-0.5, length - 0.5).detach().cpu().numpy()
    scores = torch.cat(scores).detach().cpu().numpy()
    labels = torch.cat(labels).cpu().numpy()
    long_enough = segments[:, 1] - segments[:, 0] > settings.min_length
    return soft_nms(
        segments[long_enough],
        scores[long_enough],
        labels[long_enough],
        settings.sigma,
        settings.min_score,
        settings.max_segments,
    )
