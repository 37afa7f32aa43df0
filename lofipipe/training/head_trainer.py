"""Head mode: the TAL head alone, on a feature set's [T, C] matrices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from lofipipe.evaluation.detection import Segment
from lofipipe.evaluation.ground_truth import ground_truth
from lofipipe.models.tal_head import HeadOutput, TALHead
from lofipipe.training.feature_set import Batch, FeatureSet, VideoFeatures, collate, training_window
from lofipipe.training.trainer import StepPlan, Trainer


class HeadTrainer(Trainer):
    """Trains the head on the features of `job.settings.features`."""

    def build_model(self) -> nn.Module:
        settings = self.job.settings
        self.data = FeatureSet(self.job.root, settings.features)
        self.labels = self.data.label_names
        self._head = TALHead.from_config(self.data.dim, len(self.labels), settings.head)
        return self._head

    @property
    def head(self) -> TALHead:
        return self._head

    def epoch_plan(self, epoch: int) -> list[StepPlan]:
        size = self.job.settings.batch_size
        return [StepPlan(None, size)] * max(1, len(self.job.train_videos) // size)

    def forward_batch(
        self, video_ids: Sequence[str], plan: StepPlan, seeds: Sequence[int]
    ) -> tuple[HeadOutput, Batch]:
        job = self.job
        videos = [self.data.read(video_id) for video_id in video_ids]
        if job.window:
            videos = [
                training_window(
                    video, job.window, np.random.default_rng([job.settings.seed, self.epoch, seed])
                )
                for video, seed in zip(videos, seeds, strict=True)
            ]
        batch = collate(videos, len(self.labels), job.settings.head.levels)
        device = next(self.model.parameters()).device
        return self.trained(batch.features.to(device), batch.mask.to(device)), batch

    def video_features(self, video_id: str) -> VideoFeatures:
        return self.data.read(video_id)

    def ground_truth(self, video_ids: Sequence[str]) -> list[Segment]:
        return ground_truth(self.data.annotations, video_ids)

    def description(self) -> dict[str, Any]:
        return {"mode": "head", "features": self.job.settings.features, "in_dim": self.data.dim}
