"""A small 3D CNN for tests and the demo: seconds per epoch on a CPU."""

from __future__ import annotations

import torch
from torch import nn


class TinyVideoNet(nn.Module):
    """Three strided 3D convolutions and a global average: float (B, F, 3, H, W) -> (B, 64)."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(3, 16, 3, stride=(1, 2, 2), padding=1), nn.BatchNorm3d(16), nn.ReLU(),
            nn.Conv3d(16, 32, 3, stride=(1, 2, 2), padding=1), nn.BatchNorm3d(32), nn.ReLU(),
            nn.Conv3d(32, dim, 3, stride=(2, 2, 2), padding=1), nn.BatchNorm3d(dim), nn.ReLU(),
        )
        self.dim = dim

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.body(clips.transpose(1, 2)).mean(dim=(2, 3, 4))
