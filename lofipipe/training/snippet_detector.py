"""Encoder and TAL head as one module: uint8 snippets of several videos in, the head's
output out. LoFi, LoSA and the memory planner train and measure this module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lofipipe.data.snippets import VideoSnippets
from lofipipe.models.device import to_device
from lofipipe.models.precision import autocast, resolve_precision
from lofipipe.models.registry import Encoder
from lofipipe.models.tal_head import HeadOutput, TALHead
from lofipipe.training.feature_set import Batch, VideoFeatures, collate

_CHUNK = 32  # snippets per encoder call (and per recomputed block with checkpointing)


def freeze_batchnorm(module: nn.Module) -> None:
    """Puts `module`'s batch norms in evaluation mode: training keeps the encoder's own
    statistics (as LoFi trains); their affine weights still train."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()


class SnippetDetector(nn.Module):
    """Encoder and head as one module, so data parallelism sees all parameters: uint8
    snippets of several videos -> per-video features -> the head's output."""

    def __init__(
        self, encoder: Encoder, head: TALHead, recompute: bool = False, precision: str = "fp32"
    ):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.recompute, self.precision = recompute, precision

    def encode(self, snippets: torch.Tensor) -> torch.Tensor:
        """(N, F, 3, S, S) uint8 -> (N, C) float32, in chunks. A LoSA encoder takes a
        video's snippets at once, on the host (its adapters run along them; it moves its
        backbone's chunks to the device itself)."""
        device = next(self.parameters()).device
        outputs = []
        with autocast(resolve_precision(self.precision, device.type == "cuda"), device):
            if self.encoder.losa:
                outputs.append(self.encoder(snippets, recompute=self.recompute))
            else:
                for chunk in snippets.split(_CHUNK):
                    chunk = to_device(chunk, device)
                    outputs.append(self.encoder(chunk, recompute=self.recompute))
        return torch.cat(outputs).float()

    def forward(self, videos: Sequence[VideoSnippets], levels: int) -> tuple[HeadOutput, Batch]:
        if self.encoder.losa:
            parts = [self.encode(video.frames) for video in videos]
        else:
            values = self.encode(torch.cat([video.frames for video in videos]))
            parts = values.split([len(video.frames) for video in videos])
        batch = collate(
            [as_features(video, part) for video, part in zip(videos, parts, strict=True)],
            self.head.num_classes,
            levels,
        )
        device = parts[0].device
        return self.head(batch.features.to(device), batch.mask.to(device)), batch


def as_features(video: VideoSnippets, values) -> VideoFeatures:
    return VideoFeatures(
        video.video_id,
        values,
        video.start,
        video.end,
        video.segments,
        video.labels,
        video.first_index,
    )
