"""An anchor-free temporal action localization head in the manner of ActionFormer (Zhang
et al., ECCV 2022), the head LoSA and AdaTAD train.

Features [B, C, T] of a video's snippets are projected, then built into a temporal pyramid
whose level l has stride 2^l. Every point of every level classifies the actions present
at it (sigmoid focal loss) and regresses its distances to the action's start and end in
units of its stride (DIoU loss). A ground-truth action is assigned to the points near its
center (center sampling) on the level whose regression range fits its extent; padding
past a video's end is masked everywhere.

Two trunks turn the projected features into the pyramid (`arch`): `conv`, a stride-2
convolution per level, and `transformer`, ActionFormer's own backbone: local
self-attention blocks at stride 1 (the stem) and one stride-2 block per further level,
each level then normalized (their identity FPN with LayerNorm); see `local_attention`.
Both share the embedding convolutions and the prediction heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lofipipe.models.local_attention import (
    DROP_PATH,
    HEADS,
    WINDOW,
    ChannelNorm,
    TransformerBlock,
)
from lofipipe.schemas.config import HeadConfig

# ActionFormer's defaults: regression ranges per level (in input snippets), a center
# sampling radius of 1.5 strides, focal loss alpha 0.25 / gamma 2, prior probability 0.01.
REGRESSION_RANGES = ((0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10_000))
CENTER_RADIUS = 1.5
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
PRIOR = 0.01


class _MaskedConv(nn.Module):
    """conv1d -> norm -> ReLU, then zero past the end of each video."""

    def __init__(self, dim_in: int, dim_out: int, stride: int = 1, norm: bool = True):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(dim_in, dim_out, 3, stride=stride, padding=1, bias=not norm)
        self.norm = ChannelNorm(dim_out) if norm else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stride > 1:
            mask = mask[:, :: self.stride]
        return F.relu(self.norm(self.conv(x))) * mask[:, None, :], mask


class _PredictionHead(nn.Module):
    """Shared over levels: two masked convs then a 1x3 conv to `outputs` per point."""

    def __init__(self, dim: int, outputs: int, bias: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList([_MaskedConv(dim, dim), _MaskedConv(dim, dim)])
        self.out = nn.Conv1d(dim, outputs, 3, padding=1)
        nn.init.constant_(self.out.bias, bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x, _ = layer(x, mask)
        return self.out(x)


@dataclass
class HeadOutput:
    """Per level: class logits [B, T_l, K], distances [B, T_l, 2] (in strides), mask
    [B, T_l]; and each level's stride."""

    logits: list[torch.Tensor]
    offsets: list[torch.Tensor]
    masks: list[torch.Tensor]
    strides: list[int]


class TALHead(nn.Module):
    """Features [B, C, T] and a validity mask [B, T] -> per-level classes and boundaries.

    Args:
        in_dim: feature channels C.
        num_classes: K.
        dim: width of the projection and the pyramid.
        levels: pyramid levels; the longest input should be a multiple of 2^(levels-1).
        arch: the trunk that builds the pyramid, `conv` or ActionFormer's `transformer`.
        attention_window: transformer: steps a point attends to (odd).
        heads: transformer: attention heads (a divisor of `dim`).
        stem_blocks: transformer: blocks at stride 1 before the first level.
        drop_path: transformer: probability of dropping a block's branch in training.
    """

    @classmethod
    def from_config(cls, in_dim: int, num_classes: int, config: HeadConfig) -> TALHead:
        """The head `train.head` describes, on `in_dim`-channel features."""
        return cls(
            in_dim,
            num_classes,
            config.dim,
            config.levels,
            arch=config.arch,
            attention_window=config.attention_window,
            heads=config.heads,
            stem_blocks=config.stem_blocks,
        )

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        dim: int = 256,
        levels: int = 6,
        *,
        arch: Literal["conv", "transformer"] = "conv",
        attention_window: int = WINDOW,
        heads: int = HEADS,
        stem_blocks: int = 2,
        drop_path: float = DROP_PATH,
    ):
        super().__init__()
        if arch not in ("conv", "transformer"):
            raise ValueError(f"arch must be conv or transformer, got {arch!r}")
        self.num_classes, self.levels, self.arch = num_classes, levels, arch
        self.embed = nn.ModuleList([_MaskedConv(in_dim, dim), _MaskedConv(dim, dim)])
        if arch == "conv":
            self.pyramid = nn.ModuleList(
                [_MaskedConv(dim, dim, stride=2) for _ in range(levels - 1)]
            )
        else:

            def block(stride: int) -> TransformerBlock:
                return TransformerBlock(dim, heads, attention_window, stride, drop_path)

            self.stem = nn.ModuleList([block(1) for _ in range(stem_blocks)])
            self.branch = nn.ModuleList([block(2) for _ in range(levels - 1)])
            self.level_norms = nn.ModuleList([ChannelNorm(dim) for _ in range(levels)])
        self.classify = _PredictionHead(dim, num_classes, -math.log((1 - PRIOR) / PRIOR))
        self.regress = _PredictionHead(dim, 2)
        self.scales = nn.Parameter(torch.ones(levels))

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this many snippets."""
        return 2 ** (self.levels - 1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> HeadOutput:
        mask = mask.to(features.dtype)
        x = features * mask[:, None, :]
        for layer in self.embed:
            x, mask = layer(x, mask)
        if self.arch == "conv":
            levels, masks = self._conv_pyramid(x, mask)
        else:
            levels, masks = self._transformer_pyramid(x, mask)
        logits, offsets = [], []
        for index, (x, mask) in enumerate(zip(levels, masks, strict=True)):
            logits.append(self.classify(x, mask).transpose(1, 2))
            distance = F.relu(self.scales[index] * self.regress(x, mask))
            offsets.append(distance.transpose(1, 2))
        return HeadOutput(
            logits, offsets, [m > 0 for m in masks], [2**i for i in range(self.levels)]
        )

    def _conv_pyramid(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        levels, masks = [x], [mask]
        for layer in self.pyramid:
            x, mask = layer(x, mask)
            levels.append(x)
            masks.append(mask)
        return levels, masks

    def _transformer_pyramid(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        for block in self.stem:
            x, mask = block(x, mask)
        levels, masks = [x], [mask]
        for block in self.branch:
            x, mask = block(x, mask)
            levels.append(x)
            masks.append(mask)
        # Masked after the norm, unlike ActionFormer, so that the prediction heads'
        # convolutions read zeros past a video's end however far it is padded.
        normed = [
            norm(x) * m[:, None, :]
            for norm, x, m in zip(self.level_norms, levels, masks, strict=True)
        ]
        return normed, masks


def point_positions(length: int, stride: int, device=None) -> torch.Tensor:
    """Positions (in input snippets) of a level's points: every `stride`-th snippet."""
    return torch.arange(0, length, device=device, dtype=torch.float32) * stride


def assign_targets(
    segments: torch.Tensor,
    labels: torch.Tensor,
    lengths: Sequence[int],
    strides: Sequence[int],
    num_classes: int,
    ranges: Sequence[tuple[float, float]] = REGRESSION_RANGES,
    radius: float = CENTER_RADIUS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of one video's points over all levels, concatenated.

    Args:
        segments: [N, 2] ground truth in input snippet units.
        labels: [N] class ids.
        lengths: points per level.

    Returns:
        classes [P, K] (zero rows for background; several ones where actions of the same
        shortest length overlap) and distances [P, 2] to the assigned action's start and
        end, in units of the point's stride.
    """
    positions = torch.cat([point_positions(n, s) for n, s in zip(lengths, strides, strict=True)])
    stride = torch.cat([torch.full((n,), float(s)) for n, s in zip(lengths, strides, strict=True)])
    low = torch.cat([torch.full((n,), float(ranges[i][0])) for i, n in enumerate(lengths)])
    high = torch.cat([torch.full((n,), float(ranges[i][1])) for i, n in enumerate(lengths)])
    classes = torch.zeros(len(positions), num_classes)
    distances = torch.zeros(len(positions), 2)
    if len(segments) == 0:
        return classes, distances
    segments = segments.float()
    left = positions[:, None] - segments[None, :, 0]
    right = segments[None, :, 1] - positions[:, None]
    center = segments.mean(dim=1)[None, :]
    reach = radius * stride[:, None]
    near_left = positions[:, None] - torch.maximum(center - reach, segments[None, :, 0])
    near_right = torch.minimum(center + reach, segments[None, :, 1]) - positions[:, None]
    inside = torch.minimum(near_left, near_right) > 0
    extent = torch.maximum(left, right)
    fits = (extent >= low[:, None]) & (extent <= high[:, None])
    length = (segments[:, 1] - segments[:, 0])[None, :].expand(len(positions), -1).clone()
    length[~(inside & fits)] = math.inf
    shortest, chosen = length.min(dim=1)
    positive = torch.isfinite(shortest)
    # Every action as short as the shortest one at a point labels it (overlapping actions
    # of one length are all present there); the first of them gives the distances.
    tied = (length == shortest[:, None]) & positive[:, None]
    one_hot = F.one_hot(labels.long(), num_classes).float()
    classes = (tied.float() @ one_hot).clamp(max=1.0)
    picked = torch.stack([left, right], dim=2)[torch.arange(len(positions)), chosen]
    distances[positive] = picked[positive] / stride[positive, None]
    return classes, distances


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed focal loss (Lin et al., 2017) of independent sigmoid classes, [..., C]; a
    `weight` per point ([...], e.g. 0/1 for padding) multiplies each point's classes."""
    probability = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = probability * targets + (1 - probability) * (1 - targets)
    balance = alpha * targets + (1 - alpha) * (1 - targets)
    loss = balance * (1 - p_true) ** gamma * cross_entropy
    return (loss if weight is None else loss * weight.unsqueeze(-1)).sum()


def diou_loss_1d(
    predicted: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1e-8,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed 1D distance-IoU loss (Zheng et al., 2020) of [..., 2] (start, end) distances
    from the same points: 1 - IoU + (center distance / enclosing length)^2. With a
    `weight` per point ([...]), points of weight 0 count for nothing, whatever they hold:
    masking by weight rather than by selection keeps the shapes, and so the device, free
    of a data-dependent size."""
    if weight is not None:
        kept = weight.unsqueeze(-1) > 0
        predicted = torch.where(kept, predicted, torch.ones_like(predicted))
        target = torch.where(kept, target, torch.ones_like(target))
    pred_left, pred_right = predicted[..., 0], predicted[..., 1]
    left, right = target[..., 0], target[..., 1]
    overlap = torch.minimum(pred_left, left) + torch.minimum(pred_right, right)
    union = pred_left + pred_right + left + right - overlap
    iou = overlap / union.clamp(min=eps)
    enclosing = torch.maximum(pred_left, left) + torch.maximum(pred_right, right)
    center_gap = 0.5 * (pred_right - pred_left - right + left)
    loss = 1 - iou + (center_gap / (enclosing + eps)) ** 2
    return (loss if weight is None else loss * weight).sum()
