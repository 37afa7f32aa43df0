"""Head mode: the TAL head alone, on a feature set's [T, C] matrices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from lofipipe.data.features import IMPORTED
from lofipipe.evaluation.detection import Segment
from lofipipe.evaluation.ground_truth import ground_truth
from lofipipe.layout import model_dir
from lofipipe.models.bundle import ModelBundle, write_bundle
from lofipipe.models.registry import LOSA_SUFFIX
from lofipipe.models.tal_head import HeadOutput, TALHead
from lofipipe.models.weights import build_weighted_encoder
from lofipipe.schemas.preprocess import preprocess_preset
from lofipipe.training.feature_set import Batch, FeatureSet, VideoFeatures, collate, training_crop
from lofipipe.training.trainer import StepPlan, Trainer, steps_per_pass


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
        settings = self.job.settings
        steps = steps_per_pass(len(self.job.train_videos), settings.batch_size)
        passes = max(1, math.ceil(settings.min_steps / (settings.epochs * steps)))
        return [StepPlan(None, settings.batch_size)] * (steps * passes)

    def forward_batch(
        self, video_ids: Sequence[str], plan: StepPlan, seeds: Sequence[int]
    ) -> tuple[HeadOutput, Batch]:
        job = self.job
        videos = [
            training_crop(
                self.data.read(video_id),
                job.window,
                job.settings.crop,
                np.random.default_rng([job.settings.seed, self.epoch, seed]),
            )
            for video_id, seed in zip(video_ids, seeds, strict=True)
        ]
        batch = collate(videos, len(self.labels), job.settings.head.levels)
        device = next(self.model.parameters()).device
        return self.trained(batch.features.to(device), batch.mask.to(device)), batch

    def video_features(self, video_id: str) -> VideoFeatures:
        return self.data.read(video_id)

    def ground_truth(self, video_ids: Sequence[str]) -> list[Segment]:
        return ground_truth(self.data.annotations, video_ids)

    def finish(self) -> None:
        """Leaves the model bundle (`runs/<run>/model/`): the head with the encoder that
        made its features, rebuilt from their lineage (its checkpoint, or the seed of
        its random weights)."""
        lineage, job = self.data.lineage, self.job
        # Features imported from other tools (or test sets) name no encoder to bundle.
        if lineage.get("lineage") == IMPORTED or "weights" not in lineage:
            return
        encoder, weights = lineage["encoder"], lineage["weights"]
        losa = encoder.endswith(LOSA_SUFFIX)
        name = encoder.removesuffix(LOSA_SUFFIX)
        seed = int(weights.split("=")[1]) if weights.startswith("random:seed=") else 0
        preprocess = preprocess_preset(lineage["preprocess"]["preset"])
        net = build_weighted_encoder(
            name, losa, lineage["checkpoint"], job.root.options, seed, preprocess
        ).net
        bundle = ModelBundle(
            encoder_name=name,
            losa=losa,
            preprocess=preprocess,
            precision=lineage.get("precision", "fp32"),
            features=self.data.fingerprint,
            schedule=self.data.schedule,
            head_config=job.settings.head,
            labels=self.labels,
            window=job.window,
            encoder_state=net.state_dict(),
            head_state=self.head.state_dict(),
        )
        write_bundle(job.root, model_dir(job.run), bundle)

    def description(self) -> dict[str, Any]:
        return {"mode": "head", "features": self.job.settings.features, "in_dim": self.data.dim}
