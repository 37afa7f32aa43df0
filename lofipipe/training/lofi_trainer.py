"""LoFi mode (Xu et al., NeurIPS 2021): the video encoder and the TAL head trained end to
end on snippet shards, each step at the fidelity and batch size the schedule gives it
(long cycle, short cycle or multigrid); the full fidelity is never used while the encoder
trains. Batch-norm layers keep the encoder's own statistics (frozen, as end-to-end TAL
training with a few videos per batch does), so they mean the same at every fidelity. The
adapted encoder is written as `runs/<run>/encoder.pt`, which `extract --checkpoint` loads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lofipipe.evaluation.detection import Segment
from lofipipe.models.registry import Encoder
from lofipipe.models.tal_head import HeadOutput, TALHead
from lofipipe.models.weights import build_weighted_encoder
from lofipipe.pipeline.annotation_index import AnnotationIndex
from lofipipe.pipeline.snippet_reader import SnippetReader, VideoSnippets
from lofipipe.schemas.schedule import Fidelity, Schedule, load_schedule
from lofipipe.training.feature_set import Batch, VideoFeatures, collate
from lofipipe.training.trainer import StepPlan, Trainer, parameter_groups

_CHUNK = 32  # snippets per encoder call (and per recomputed block with checkpointing)


def encoder_path(run: str) -> str:
    return f"runs/{run}/encoder.pt"


def training_fidelities(schedule: Schedule, mode: str) -> tuple[Fidelity, ...]:
    """What a mode trains on: LoFi the reduced fidelities, LoSA and the head the full one."""
    return schedule.train if mode == "lofi" else (schedule.full,)


def validation_fidelity(fidelities: Sequence[Fidelity]) -> Fidelity:
    """The fidelity validation encodes at: the one with the most snippets (then pixels)."""
    return max(fidelities, key=lambda f: (f.snippets, f.size))


def schedule_plan(schedule: Schedule, epoch: int, videos: int) -> list[StepPlan]:
    """The steps of one epoch over `videos` training videos: as many batches as fit, each
    at the fidelity and batch size the schedule gives it."""
    _, size = schedule.step(epoch, 0)
    plans = []
    for batch in range(max(1, videos // size)):
        fidelity, size = schedule.step(epoch, batch)
        # Multigrid scales the learning rate with the batch (the linear scaling rule).
        scale = size / schedule.batch_size if schedule.cycle == "multigrid" else 1.0
        plans.append(StepPlan(fidelity.name, size, scale))
    return plans


class SnippetDetector(nn.Module):
    """Encoder and head as one module, so data parallelism sees all parameters: uint8
    snippets of several videos -> per-video features -> the head's output."""

    def __init__(self, encoder: Encoder, head: TALHead, recompute: bool = False,
                 autocast: bool = False):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.recompute, self.autocast = recompute, autocast

    def encode(self, snippets: torch.Tensor) -> torch.Tensor:
        """(N, F, 3, S, S) uint8 -> (N, C) float32, in chunks (a LoSA encoder takes a
        video's snippets at once: its adapters run along them)."""
        device = next(self.parameters()).device
        outputs = []
        chunks = [snippets] if self.encoder.losa else snippets.split(_CHUNK)
        with torch.autocast(device.type, enabled=self.autocast and device.type == "cuda"):
            for chunk in chunks:
                chunk = chunk.to(device, non_blocking=True)
                if self.recompute and torch.is_grad_enabled():
                    outputs.append(checkpoint(self.encoder, chunk, use_reentrant=False))
                else:
                    outputs.append(self.encoder(chunk))
        return torch.cat(outputs).float()

    def forward(self, videos: Sequence[VideoSnippets], levels: int
                ) -> tuple[HeadOutput, Batch]:
        if self.encoder.losa:
            parts = [self.encode(video.frames) for video in videos]
        else:
            values = self.encode(torch.cat([video.frames for video in videos]))
            parts = values.split([len(video.frames) for video in videos])
        batch = collate([_as_features(video, part) for video, part in zip(
            videos, parts, strict=True)], self.head.num_classes, levels)
        device = parts[0].device
        return self.head(batch.features.to(device), batch.mask.to(device)), batch


def _as_features(video: VideoSnippets, values) -> VideoFeatures:
    return VideoFeatures(video.video_id, values, video.start, video.end, video.segments,
                         video.labels, video.first_index)


class LofiTrainer(Trainer):
    """Trains encoder and head on the reduced fidelities of `job.schedule`."""

    def build_model(self) -> nn.Module:
        job, settings = self.job, self.job.settings
        self.schedule = load_schedule(job.schedule)
        self.annotations = AnnotationIndex(job.root)
        self.labels = self.annotations.label_names
        fidelities = training_fidelities(self.schedule, settings.mode)
        self.readers = {f.name: SnippetReader(job.root, f.name) for f in fidelities}
        self.validation = validation_fidelity(fidelities).name
        encoder = build_weighted_encoder(settings.encoder, settings.mode == "losa",
                                         settings.checkpoint, job.root.options, settings.seed)
        self._head = TALHead(encoder.dim, len(self.labels), settings.head.dim,
                             settings.head.levels)
        return SnippetDetector(encoder, self._head, settings.activation_checkpointing,
                               settings.mixed_precision)

    @property
    def head(self) -> TALHead:
        return self._head

    def epoch_plan(self, epoch: int) -> list[StepPlan]:
        return schedule_plan(self.schedule, epoch, len(self.job.train_videos))

    def parameter_groups(self) -> list[dict[str, Any]]:
        settings = self.job.settings
        encoder = parameter_groups(self.model.encoder, settings.weight_decay)
        for group in encoder:  # a pretrained encoder adapts, it is not retrained
            group["lr"] = settings.lr * settings.encoder_lr_scale
        return encoder + parameter_groups(self.head, settings.weight_decay)

    def set_train_mode(self) -> None:
        self.trained.train()
        for module in self.model.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    def forward_batch(self, video_ids: Sequence[str], plan: StepPlan,
                      seeds: Sequence[int]) -> tuple[HeadOutput, Batch]:
        fidelity = self.schedule.fidelity(plan.fidelity)
        videos = []
        for video_id, seed in zip(video_ids, seeds, strict=True):
            video = self.readers[plan.fidelity].read_video(video_id)
            if len(video.start) > fidelity.snippets:  # stride sampling: one window
                rng = np.random.default_rng([self.job.settings.seed, self.epoch, seed])
                video = video.window(int(rng.integers(0, len(video.start) - fidelity.snippets
                                                       + 1)), fidelity.snippets)
            videos.append(video)
        return self.trained(videos, self.job.settings.head.levels)

    def video_features(self, video_id: str) -> VideoFeatures:
        video = SnippetReader(self.job.root, self.validation).read_video(video_id)
        with torch.no_grad():
            values = self.model.encode(video.frames).cpu().numpy()
        return _as_features(video, values)

    def ground_truth(self, video_ids: Sequence[str]) -> list[Segment]:
        return self.annotations.ground_truth(video_ids)

    def model_state(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(),
                "encoder": self.model.encoder.net.state_dict()}

    def load_model_state(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.model.encoder.net.load_state_dict(state["encoder"])

    def finish(self) -> None:
        buffer = io.BytesIO()
        torch.save({"encoder": self.model.encoder.net.state_dict(),
                    "lofipipe": {"encoder": self.job.settings.encoder,
                                 "schedule": self.schedule.name, "run": self.job.run}},
                   buffer)
        self.job.root.write_bytes(encoder_path(self.job.run), buffer.getvalue())

    def description(self) -> dict[str, Any]:
        return {"mode": "lofi", "encoder": self.job.settings.encoder,
                "schedule": self.schedule.name}


class LosaTrainer(LofiTrainer):
    """LoSA mode (Gupta et al., WACV 2025): a frozen ViT backbone run without gradients,
    its LoSA adapters, gated fusion and the head trained on full-fidelity snippets. The
    adapted encoder (backbone and adapters) is `runs/<run>/encoder.pt`, which
    `extract --losa --checkpoint` loads."""

    def epoch_plan(self, epoch: int) -> list[StepPlan]:
        size = self.job.settings.batch_size
        count = max(1, len(self.job.train_videos) // size)
        return [StepPlan(self.schedule.full.name, size)] * count

    def description(self) -> dict[str, Any]:
        return {"mode": "losa", "encoder": self.job.settings.encoder,
                "schedule": self.schedule.name}
