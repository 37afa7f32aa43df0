"""A small 3D CNN for tests and the demo: seconds per epoch on a CPU."""

from __future__ import annotations

import torch
from torch import nn


class TinyVideoNet(nn.Module):
    """Three strided 3D convolutions, a maximum over space and a mean over time:
    float (B, F, 3, H, W) -> (B, 128).

    The spatial maximum keeps what a small moving object does in a corner of the frame,
    which an average over a textured background washes out: on the demo dataset the TAL
    head reaches about twice the validation mAP on these features than on averaged ones.
    """

    def __init__(self, dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(3, 16, 3, stride=(1, 2, 2), padding=1),
            nn.BatchNorm3d(16),
            nn.ReLU(),
            nn.Conv3d(16, 32, 3, stride=(1, 2, 2), padding=1),
            nn.BatchNorm3d(32),
            nn.ReLU(),
            nn.Conv3d(32, dim, 3, stride=(2, 2, 2), padding=1),
            nn.BatchNorm3d(dim),
            nn.ReLU(),
        )
        self.dim = dim

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.body(clips.transpose(1, 2)).amax(dim=(3, 4)).mean(dim=2)
