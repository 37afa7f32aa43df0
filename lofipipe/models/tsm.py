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
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(batch_frames, channels, height, width)


class _Block(nn.Module):
    """A ResNet basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) block with the shift.

    Parameter names follow torchvision's ResNet (conv1, bn1, ..., downsample), so plain
    ResNet and TSM checkpoints map onto it by name.
    """

    def __init__(self, inputs: int, width: int, stride: int, bottleneck: bool, frames: int):
        super().__init__()
        self.frames, self.bottleneck = frames, bottleneck
        self.outputs = width * 4 if bottleneck else width
        if bottleneck:
            self.conv1 = nn.Conv2d(inputs, width, 1, bias=False)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.conv3 = nn.Conv2d(width, self.outputs, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(self.outputs)
        else:
            self.conv1 = nn.Conv2d(inputs, width, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(width), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inputs != self.outputs:
            self.downsample = nn.Sequential(
                nn.Conv2d(inputs, self.outputs, 1, stride, bias=False), nn.BatchNorm2d(self.outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(temporal_shift(x, self.frames))))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(self.relu(out)))
        return self.relu(out + identity)


class TSMResNet(nn.Module):
    """TSM-ResNet over snippets: float input (B, F, 3, H, W) -> features (B, dim)."""

    LAYOUTS = {18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True)}

    def __init__(self, depth: int, frames: int):
        super().__init__()
        blocks, bottleneck = self.LAYOUTS[depth]
        self.frames = frames
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inputs = 64
        for stage, count in enumerate(blocks):
            layer = []
            for index in range(count):
                block = _Block(
                    inputs, 64 * 2**stage, 2 if stage and index == 0 else 1, bottleneck, frames
                )
                layer.append(block)
                inputs = block.outputs
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.dim = inputs

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        batch, frames = clips.shape[:2]
        if frames != self.frames:
            raise ValueError(f"TSM-ResNet built for {self.frames} frames got {frames}")
        # Channels-last: oneDNN's convolutions run about a third faster on it on CPU (the
        # same features; bench/extract_bench.py measures the forward pass).
        frames_2d = clips.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(frames_2d))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        per_frame = x.mean(dim=(2, 3)).view(batch, frames, self.dim)
        return per_frame.mean(dim=1)
