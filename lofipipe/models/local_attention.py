"""ActionFormer's transformer trunk (Zhang et al., ECCV 2022): masked local self-attention
over a video's time steps, and the pre-LayerNorm block that builds one pyramid level.

`local_attention` lets each time step attend to the steps within `window // 2` of it. It
splits the (padded) sequence into blocks of `window - 1` queries that each see their block
and `window // 2` keys on either side: two batched matmuls per block and a fixed band mask,
so time and memory grow linearly with T and any T works (the tail is padded up to a whole
block and cut off again). Forward and backward on CPU (B 2, 4 heads of 128 channels):
3 / 14 / 39 ms at T 256 / 1024 / 2304, against 5 / 109 / 653 ms for a dense T x T
attention under a band mask, so there is no dense path for short inputs.

The block follows ActionFormer's official `TransformerBlock` / `LocalMaskedMHCA`: the
queries, keys and values come from depthwise convolutions (kernel 3) followed by a
LayerNorm and a 1x1 projection, of stride 2 on a downsampling level so that attention runs
at the lower rate; the skip connection of such a level is a max-pool (kernel 3, stride 2).
It departs from it in two ways. The attention is computed in blocks rather than with
Longformer's diagonal chunks, which need T to be a multiple of `window - 1`. And a video's
outputs do not depend on how far its batch pads it: the convolutions read zeros and the
max-pool reads -inf past a video's end, where the official code feeds them LayerNorm's
bias and zeros. The parameters match the official ones one for one, under other names
(26,067,968 for the trunk and its per-level norms at THUMOS-14's 2048 -> 512).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ActionFormer's defaults (libs/core/config.py, configs/thumos_i3d.yaml): 4 heads, a
# window of 19 on THUMOS-14, drop-path 0.1 with a per-channel residual scale that starts
# at 1e-4 (their `AffineDropPath`, after Touvron et al., 2021), an MLP 4x as wide.
HEADS = 4
WINDOW = 19
DROP_PATH = 0.1
RESIDUAL_SCALE = 1e-4
MLP_RATIO = 4


class ChannelNorm(nn.Module):
    """LayerNorm over channels at each time step ([B, C, T]), blind to padding."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def local_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor, window: int
) -> torch.Tensor:
    """Softmax attention of each step to the valid keys within `window // 2` steps.

    Args:
        query, key, value: [B, H, T, D]; the query already scaled.
        valid: [B, T] bool, False for padded keys (they are never attended to).
        window: odd, the number of steps a query sees at most.

    Returns:
        [B, H, T, D]. A query with no valid key in reach gets an average of its window's
        values; callers zero the outputs of padded steps.
    """
    half = window // 2
    batch, heads, length, dim = query.shape
    block = max(2 * half, 1)
    blocks = -(-length // block)
    tail = blocks * block - length
    span = block + 2 * half
    query = F.pad(query, (0, 0, 0, tail)).view(batch, heads, blocks, block, dim)
    key = F.pad(key, (0, 0, half, half + tail)).unfold(2, span, block)
    value = F.pad(value, (0, 0, half, half + tail)).unfold(2, span, block).transpose(-1, -2)
    reach = F.pad(valid, (half, half + tail), value=False).unfold(1, span, block)
    # Query i of a block sees key j of its span when they are at most `half` steps apart.
    offset = (
        torch.arange(span, device=query.device)[None, :]
        - torch.arange(block, device=query.device)[:, None]
    )
    band = (offset >= 0) & (offset <= 2 * half)
    allowed = band[None, None] & reach[:, None, :, None, :]
    scores = (query @ key).masked_fill(~allowed, torch.finfo(query.dtype).min)
    out = scores.softmax(dim=-1) @ value
    return out.reshape(batch, heads, blocks * block, dim)[:, :, :length]


class _DepthwiseProjection(nn.Module):
    """ActionFormer's query, key or value map: depthwise conv (kernel 3) -> LayerNorm -> 1x1."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, stride=stride, padding=1, groups=dim, bias=False)
        self.norm = ChannelNorm(dim)
        self.project = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.norm(self.conv(x)))


class LocalAttention(nn.Module):
    """Masked multi-head local self-attention over [B, C, T]; stride 2 halves T."""

    def __init__(self, dim: int, heads: int = HEADS, window: int = WINDOW, stride: int = 1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.window, self.stride = heads, window, stride
        self.query = _DepthwiseProjection(dim, stride)
        self.key = _DepthwiseProjection(dim, stride)
        self.value = _DepthwiseProjection(dim, stride)
        self.out = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, T] (zero past each video's end), mask [B, T] (0/1, x's dtype) -> the
        attended features [B, C, T'] (zero past the end) and their mask [B, T']."""
        mask = mask[:, :: self.stride]
        batch, channels = x.shape[:2]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, self.heads, channels // self.heads, -1).transpose(2, 3)

        scale = 1.0 / math.sqrt(channels // self.heads)
        query = split(self.query(x)) * scale
        out = local_attention(
            query, split(self.key(x)), split(self.value(x)), mask > 0, self.window
        )
        out = out.transpose(2, 3).reshape(batch, channels, -1)
        return self.out(out) * mask[:, None, :], mask


class _DropPath(nn.Module):
    """Scales a residual branch per channel and, in training, drops it for whole samples."""

    def __init__(self, dim: int, probability: float):
        super().__init__()
        self.probability = probability
        # One axis, so that training's parameter groups spare it weight decay, as
        # ActionFormer does its scales.
        self.scale = nn.Parameter(torch.full((dim,), RESIDUAL_SCALE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale[:, None] * x
        if not self.training or self.probability == 0.0:
            return x
        keep = 1.0 - self.probability
        kept = torch.rand(x.shape[0], 1, 1, device=x.device) < keep
        return x * kept / keep


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block on [B, C, T]: local attention and a 4x MLP, each a scaled
    residual branch.

    With stride 2 it is one downsampling level of the pyramid: the attention's queries,
    keys and values come from stride-2 convolutions and the skip path is a max-pool.
    """

    def __init__(
        self,
        dim: int,
        heads: int = HEADS,
        window: int = WINDOW,
        stride: int = 1,
        drop_path: float = DROP_PATH,
    ):
        super().__init__()
        self.stride = stride
        self.norm_attention = ChannelNorm(dim)
        self.attention = LocalAttention(dim, heads, window, stride)
        self.norm_mlp = ChannelNorm(dim)
        self.mlp = nn.Sequential(
            nn.Conv1d(dim, MLP_RATIO * dim, 1), nn.GELU(), nn.Conv1d(MLP_RATIO * dim, dim, 1)
        )
        self.drop_attention = _DropPath(dim, drop_path)
        self.drop_mlp = _DropPath(dim, drop_path)
        for module in self.modules():
            if isinstance(module, nn.Conv1d) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, T] (zero past each video's end), mask [B, T] (0/1, x's dtype)."""
        attended, out_mask = self.attention(self.norm_attention(x) * mask[:, None, :], mask)
        keep = out_mask[:, None, :]
        if self.stride > 1:
            padded = x.masked_fill(mask[:, None, :] == 0, -math.inf)
            skip = F.max_pool1d(padded, 3, self.stride, 1).masked_fill(keep == 0, 0.0)
        else:
            skip = x
        x = skip + self.drop_attention(attended)
        return x + self.drop_mlp(self.mlp(self.norm_mlp(x)) * keep), out_mask
