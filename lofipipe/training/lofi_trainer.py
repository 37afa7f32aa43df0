"""LoFi mode (Xu et al., NeurIPS 2021): the video encoder and the TAL head trained end to
end on snippet shards, each step at the fidelity and batch size the schedule gives it
(long cycle, short cycle or multigrid); the full fidelity is never used while the encoder
trains. Batch-norm layers keep the encoder's own statistics (frozen, as end-to-end TAL
training with a few videos per batch does), so they mean the same at every fidelity;
`train.batchnorm: recalibrate` first re-estimates them on the training videos. The
adapted encoder is written as `runs/<run>/encoder.pt`, which `extract --checkpoint` loads.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lofipipe.data.annotations import AnnotationIndex
from lofipipe.data.snippets import SnippetReader, VideoSnippets
from lofipipe.errors import ConfigError
from lofipipe.evaluation.detection import Segment
from lofipipe.evaluation.ground_truth import ground_truth
from lofipipe.layout import encoder_path
from lofipipe.models.tal_head import HeadOutput, TALHead
from lofipipe.models.weights import build_weighted_encoder
from lofipipe.schemas.schedule import Schedule
from lofipipe.training.feature_set import Batch, VideoFeatures
from lofipipe.training.snippet_detector import SnippetDetector, as_features, freeze_batchnorm
from lofipipe.training.trainer import StepPlan, Trainer, parameter_groups


def schedule_plan(schedule: Schedule, epoch: int, videos: int) -> list[StepPlan]:
    """The steps of one epoch over `videos` training videos: batches at the fidelity and
    batch size the schedule gives each, until every video has had its turn."""
    plans: list[StepPlan] = []
    taken = 0
    while taken < videos:
        fidelity, size = schedule.step(epoch, len(plans))
        # Multigrid scales the learning rate with the batch (the linear scaling rule).
        scale = size / schedule.batch_size if schedule.cycle == "multigrid" else 1.0
        plans.append(StepPlan(fidelity.name, size, scale))
        taken += size
    return plans


def recalibrate_batchnorm(module: nn.Module, forward: Callable[[], None]) -> int:
    """Re-estimates the running statistics of `module`'s batch-norm layers as the plain
    average over the batches that `forward` passes through it (AdaBN, Li et al. 2016):
    without gradients, everything else in evaluation mode; the layers' momentum and every
    module's mode are restored after. Returns the number of layers."""
    modes = [(part, part.training) for part in module.modules()]
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    seen = dict.fromkeys(norms, 0)

    def average(norm: nn.Module, _inputs: object) -> None:
        # The n-th batch weighs 1/n: a cumulative average, counted here rather than by
        # batch norm's own `momentum=None`, which reads its counter back from the device.
        seen[norm] += 1
        norm.momentum = 1.0 / seen[norm]

    module.eval()
    hooks = [norm.register_forward_pre_hook(average) for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.train()
    try:
        with torch.no_grad():
            forward()
    finally:
        for hook in hooks:
            hook.remove()
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        for part, training in modes:
            part.training = training
    return len(norms)


class LofiTrainer(Trainer):
    """Trains encoder and head on the reduced fidelities of `job.schedule`."""

    def build_model(self) -> nn.Module:
        job, settings = self.job, self.job.settings
        if job.schedule is None or job.preprocess is None:
            raise ValueError(f"{settings.mode} training needs the job's schedule and preprocessing")
        self.schedule, self.preprocess = job.schedule, job.preprocess
        self.annotations = AnnotationIndex(job.root)
        self.labels = self.annotations.label_names
        self.readers: dict[str, SnippetReader] = {}
        self.validation = self.schedule.validation_fidelity(settings.mode).name
        encoder = build_weighted_encoder(
            settings.encoder,
            settings.mode == "losa",
            settings.checkpoint,
            job.root.options,
            settings.seed,
            self.preprocess,
        )
        self._head = TALHead.from_config(encoder.dim, len(self.labels), settings.head)
        return SnippetDetector(
            encoder, self._head, settings.activation_checkpointing, settings.precision
        )

    @property
    def head(self) -> TALHead:
        return self._head

    def reader(self, fidelity: str) -> SnippetReader:
        """The reader of one fidelity's shards, decoding on this worker's GPU with
        `train.shard_decoder` gpu (made on first use: the model is on its device by then)."""
        if fidelity not in self.readers:
            device = "cpu"
            if self.job.settings.shard_decoder == "gpu":
                if self.device.type != "cuda":
                    raise ConfigError(
                        f"train.shard_decoder is gpu, but this worker trains on {self.device}"
                    )
                index = self.device.index
                device = f"cuda:{torch.cuda.current_device() if index is None else index}"
            self.readers[fidelity] = SnippetReader(self.job.root, fidelity, device=device)
        return self.readers[fidelity]

    def epoch_plan(self, epoch: int) -> list[StepPlan]:
        return schedule_plan(self.schedule, epoch, len(self.job.train_videos))

    def parameter_groups(self) -> list[dict[str, Any]]:
        settings = self.job.settings
        encoder = parameter_groups(self.model.encoder, settings.weight_decay)
        for group in encoder:  # a pretrained encoder adapts, it is not retrained
            group["lr"] = settings.lr * settings.encoder_lr_scale
        return encoder + parameter_groups(self.head, settings.weight_decay)

    def start(self) -> None:
        if self.job.settings.batchnorm != "recalibrate":
            return
        reader = self.reader(self.schedule.full.name)
        snippets = 0

        def encode_training_videos() -> None:
            nonlocal snippets
            for video in reader.videos(set(self.job.train_videos)):
                self.model.encode(video.frames)
                snippets += len(video.frames)

        layers = recalibrate_batchnorm(self.model.encoder, encode_training_videos)
        if self.rank == 0:
            self.log(
                f"batch norm: {layers} layers re-estimated on {snippets} full-fidelity "
                f"snippets of {len(self.job.train_videos)} training videos"
            )

    def set_train_mode(self) -> None:
        self.trained.train()
        freeze_batchnorm(self.model.encoder)

    def read_batch(
        self, video_ids: Sequence[str], plan: StepPlan, seeds: Sequence[int]
    ) -> list[VideoSnippets]:
        fidelity = self.schedule.fidelity(plan.fidelity)
        videos = []
        for video_id, seed in zip(video_ids, seeds, strict=True):
            video = self.reader(plan.fidelity).read_video(video_id)
            if len(video.start) > fidelity.snippets:  # stride sampling: one window
                rng = np.random.default_rng([self.job.settings.seed, self.epoch, seed])
                video = video.window(
                    int(rng.integers(0, len(video.start) - fidelity.snippets + 1)),
                    fidelity.snippets,
                )
            videos.append(video)
        return videos

    def forward_batch(
        self, inputs: list[VideoSnippets], plan: StepPlan
    ) -> tuple[HeadOutput, Batch]:
        return self.trained(inputs, self.job.settings.head.levels)

    def video_features(self, video_id: str) -> VideoFeatures:
        video = self.reader(self.validation).read_video(video_id)
        with torch.no_grad():
            values = self.model.encode(video.frames).cpu().numpy()
        return as_features(video, values)

    def ground_truth(self, video_ids: Sequence[str]) -> list[Segment]:
        return ground_truth(self.annotations, video_ids)

    def model_state(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "encoder": self.model.encoder.net.state_dict()}

    def load_model_state(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.model.encoder.net.load_state_dict(state["encoder"])

    def finish(self) -> None:
        buffer = io.BytesIO()
        torch.save(
            {
                "encoder": self.model.encoder.net.state_dict(),
                "lofipipe": {
                    "encoder": self.job.settings.encoder,
                    "schedule": self.schedule.name,
                    "preprocess": self.preprocess.name,
                    "run": self.job.run,
                },
            },
            buffer,
        )
        self.job.root.write_bytes(encoder_path(self.job.run), buffer.getvalue())

    def description(self) -> dict[str, Any]:
        return {
            "mode": "lofi",
            "encoder": self.job.settings.encoder,
            "schedule": self.schedule.name,
            "preprocess": self.preprocess.name,
        }
