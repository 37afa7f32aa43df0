"""Head mode: the TAL head alone, on a feature set's [T, C] matrices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from lofipipe.data.features import IMPORTED
from lofipipe.errors import InputError, LofipipeError, one_line
from lofipipe.evaluation.detection import Segment
from lofipipe.evaluation.ground_truth import ground_truth
from lofipipe.layout import model_dir
from lofipipe.models.bundle import NOT_BUNDLED, ModelBundle, write_bundle
from lofipipe.models.registry import LOSA_SUFFIX, Encoder
from lofipipe.models.tal_head import HeadOutput, TALHead
from lofipipe.models.weights import build_weighted_encoder, load_encoder_checkpoint
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

    def read_batch(self, video_ids: Sequence[str], plan: StepPlan, seeds: Sequence[int]) -> Batch:
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
        return collate(videos, len(self.labels), job.settings.head.levels)

    def forward_batch(self, inputs: Batch, plan: StepPlan) -> tuple[HeadOutput, Batch]:
        device = next(self.model.parameters()).device
        return self.trained(inputs.features.to(device), inputs.mask.to(device)), inputs

    def video_features(self, video_id: str) -> VideoFeatures:
        return self.data.read(video_id)

    def ground_truth(self, video_ids: Sequence[str]) -> list[Segment]:
        return ground_truth(self.data.annotations, video_ids)

    def finish(self) -> None:
        """Leaves the model bundle (`runs/<run>/model/`): the head with the encoder that
        made its features, rebuilt from their lineage (its checkpoint, checked to be the
        one extracted with, or the seed of its random weights). A bundle that cannot be
        made does not fail the trained run: `model/not-bundled.txt` says why."""
        lineage, job = self.data.lineage, self.job
        # Features imported from other tools (or test sets) name no encoder to bundle.
        if lineage.get("lineage") == IMPORTED or "weights" not in lineage:
            return
        try:
            encoder = self._feature_encoder()
        except (LofipipeError, OSError, RuntimeError) as error:
            job.root.write_text(f"{model_dir(job.run)}/{NOT_BUNDLED}", one_line(error) + "\n")
            return
        bundle = ModelBundle(
            encoder_name=encoder.spec.name,
            losa=encoder.losa,
            preprocess=encoder.preprocess,
            precision=lineage.get("precision", "fp32"),
            features=self.data.fingerprint,
            schedule=self.data.schedule,
            head_config=job.settings.head,
            labels=self.labels,
            window=job.window,
            encoder_state=encoder.net.state_dict(),
            head_state=self.head.state_dict(),
        )
        write_bundle(job.root, model_dir(job.run), bundle)

    def _feature_encoder(self) -> Encoder:
        """The encoder that made the features, from their lineage."""
        lineage = self.data.lineage
        name, weights = lineage["encoder"], lineage["weights"]
        losa = name.endswith(LOSA_SUFFIX)
        preprocess = preprocess_preset(lineage["preprocess"]["preset"])
        seed = int(weights.split("=")[1]) if weights.startswith("random:seed=") else 0
        encoder = build_weighted_encoder(
            name.removesuffix(LOSA_SUFFIX), losa, None, self.job.root.options, seed, preprocess
        )
        if lineage["checkpoint"]:  # read here, where its digest is checked
            _, digest = load_encoder_checkpoint(
                encoder, lineage["checkpoint"], self.job.root.options, losa
            )
            if f"sha256:{digest}" != weights:
                raise InputError(
                    f"{lineage['checkpoint']} is no longer the checkpoint the features "
                    f"were extracted with (its SHA-256 changed)"
                )
        return encoder

    def description(self) -> dict[str, Any]:
        return {"mode": "head", "features": self.job.settings.features, "in_dim": self.data.dim}
