"""A trained head's detections in one video's features: the inference that validation,
the run's predictions and `lofipipe detect` share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lofipipe.models.tal_head import TALHead
from lofipipe.models.tal_postprocess import PostProcessing, detect, soft_nms
from lofipipe.schemas.config import HeadConfig
from lofipipe.training.feature_set import VideoFeatures, collate, inference_windows


def post_processing(head: HeadConfig) -> PostProcessing:
    """The head config's soft-NMS and candidate settings."""
    return PostProcessing(
        pre_nms_topk=head.pre_nms_topk, sigma=head.nms_sigma, max_segments=head.max_segments
    )


def predict_video(
    head: TALHead,
    video: VideoFeatures,
    labels: Sequence[str],
    levels: int,
    post: PostProcessing,
    window: int = 0,
) -> list[dict[str, Any]]:
    """ActivityNet-format detections of one video, best first: the head over windows of
    `window` snippets overlapping by half (0: the whole video at once), the detections of
    overlapping windows merged by soft-NMS."""
    windows = inference_windows(video, window or len(video.values))
    segments, scores, classes = [], [], []
    head.eval()
    with torch.no_grad():
        device = next(head.parameters()).device
        for part in windows:
            batch = collate([part], len(labels), levels)
            found = detect(
                head(batch.features.to(device), batch.mask.to(device)), 0, len(part.values), post
            )
            segments.append(part.to_seconds(found[0]))
            scores.append(found[1])
            classes.append(found[2])
    segments, scores, classes = (np.concatenate(x) for x in (segments, scores, classes))
    if len(windows) > 1:  # overlapping windows found some actions twice
        segments, scores, classes = soft_nms(
            segments, scores, classes, post.sigma, post.min_score, post.max_segments
        )
    segments = segments.clip(video.start[0], video.end[-1])
    return [
        {
            "segment": [round(float(a), 3), round(float(b), 3)],
            "label": labels[int(label)],
            "score": round(float(score), 6),
        }
        for (a, b), score, label in zip(segments, scores, classes, strict=True)
    ]
