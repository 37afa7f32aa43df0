"""TSM-ResNet (Lin et al., ICCV 2019), the encoder the LoFi paper adapts.

A 2D ResNet whose residual blocks shift a quarter of their channels along time before
their first convolution: 1/8 of the channels take the next frame's values, 1/8 the previous
frame's, zeros at the ends. Frames are pooled to one vector each, and a snippet's feature
is the mean over its frames (512-d for ResNet-18, 2048-d for ResNet-50).
"""

from __future__ import annotations

import torch
from torch import nn

SHIFT_DIVISOR = 8  # 1/8 of the channels each way (TSM paper, Sec. 3.2)


def temporal_shift(x: torch.Tensor, frames: int, divisor: int = SHIFT_DIVISOR) -> torch.Tensor:
    """Shifts channels along time in (N*T, C, H, W) activations of N clips of T frames.

    Channels [0, C/d) take the values of the next frame, [C/d, 2C/d) those of the
    previous frame; the first/last frame gets zeros where no neighbour exists.
    """
    batch_frames, channels, height, width = x.shape
    x = x.view(batch_frames // frames, frames, channels, height, width)
    fold = channels // divisor
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold: 2 * fold] = x[:, :-1, fold: 2 * fold]
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return out.view(batch_frames, channels, height, width)


class _Block(nn.Module):
    """A ResNet basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) block with the shift."""

    def __init__(self, inputs: int, width: int, stride: int, bottleneck: bool, frames: int):
        super().__init__()
        self.frames = frames
        outputs = width * 4 if bottleneck else width
        if bottleneck:
            layers = [nn.Conv2d(inputs, width, 1, bias=False), nn.BatchNorm2d(width),
                      nn.ReLU(inplace=True),
                      nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                      nn.ReLU(inplace=True),
                      nn.Conv2d(width, outputs, 1, bias=False), nn.BatchNorm2d(outputs)]
        else:
            layers = [nn.Conv2d(inputs, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                      nn.ReLU(inplace=True),
                      nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)]
        self.body = nn.Sequential(*layers)
        self.downsample = None
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False),
                                            nn.BatchNorm2d(outputs))
        self.relu = nn.ReLU(inplace=True)
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.body(temporal_shift(x, self.frames)) + identity)


class TSMResNet(nn.Module):
    """TSM-ResNet over snippets: float input (B, F, 3, H, W) -> features (B, dim)."""

    LAYOUTS = {18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True)}

    def __init__(self, depth: int, frames: int):
        super().__init__()
        blocks, bottleneck = self.LAYOUTS[depth]
        self.frames = frames
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, inputs = [], 64
        for stage, count in enumerate(blocks):
            width = 64 * 2**stage
            for index in range(count):
                block = _Block(inputs, width, 2 if stage and index == 0 else 1, bottleneck,
                               frames)
                layers.append(block)
                inputs = block.outputs
        self.layers = nn.Sequential(*layers)
        self.dim = inputs

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        batch, frames = clips.shape[:2]
        if frames != self.frames:
            raise ValueError(f"TSM-ResNet built for {self.frames} frames got {frames}")
        x = self.layers(self.stem(clips.flatten(0, 1)))
        per_frame = x.mean(dim=(2, 3)).view(batch, frames, self.dim)
        return per_frame.mean(dim=1)
