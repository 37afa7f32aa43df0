"""Video ViTs in the VideoMAE-v2 style, and LoSA adapters that run beside them.

The ViT embeds 2xPxP tubelets of a 16-frame clip (P = 16, or 14 for ViT-g), adds fixed
sine-cosine positions (one per token, so the table follows the token count) and runs
pre-norm transformer blocks; a clip's feature is the mean of its last tokens, normalized.
Parameter names are VideoMAE's (patch_embed.proj, blocks.N.attn.qkv with q_bias and
v_bias, ..., fc_norm), so its checkpoints load by name.

LoSA (Gupta et al., WACV 2025) keeps the backbone frozen and run without gradients, taps
the outputs of chosen intermediate blocks, and trains small temporal adapters over the
sequence of a video's snippets: short-range ones (a depthwise convolution over neighbouring
snippets) and long-range ones (self-attention over all snippets). A learned gate per adapter
adds its output to the backbone's feature; gates start closed (and get gradients from
the adapters' random start), so an untrained LoSA encoder gives the backbone's features.
"""

from __future__ import annotations

import torch
from torch import nn

TUBELET = 2  # frames per token (VideoMAE's tubelet_size)


def sincos_positions(
    count: int, dim: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Fixed 1D sine-cosine position codes (count, dim) in float32, built in float64 on
    `device` as VideoMAE builds them."""
    position = torch.arange(count, dtype=torch.float64, device=device)[:, None]
    steps = torch.arange(0, dim, 2, dtype=torch.float64, device=device)
    scale = torch.pow(10000.0, -steps / dim)
    codes = torch.zeros(count, dim, dtype=torch.float64, device=device)
    codes[:, 0::2] = torch.sin(position * scale)
    codes[:, 1::2] = torch.cos(position * scale)[:, : dim // 2]
    return codes.float()


class _Attention(nn.Module):
    """VideoMAE's attention: an unbiased `qkv` projection plus learned query and value
    biases. A key bias would add the same amount to all of a query's scores, which the
    softmax cancels, so VideoMAE has none (and an older lofipipe checkpoint's key bias
    can be dropped without changing the output)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = nn.functional.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VideoViT(nn.Module):
    """A video ViT: float clips (B, F, 3, H, W) -> features (B, dim).

    The final norm is VideoMAE fine-tuning's `fc_norm`, on the mean token. After
    `norm_tokens(True)` it is `norm` on each token before the mean instead, as VideoMAE's
    pre-training encoder (and fine-tuning with `use_mean_pooling` off) names and applies it;
    the weights loader switches when a checkpoint has `norm` and no `fc_norm`.
    """

    def __init__(
        self, dim: int, depth: int, heads: int, mlp_hidden: int, patch: int = 16, frames: int = 16
    ):
        super().__init__()
        self.frames, self.dim, self.patch = frames, dim, patch
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, dim, (TUBELET, patch, patch), (TUBELET, patch, patch))
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_hidden) for _ in range(depth))
        self.norm: nn.LayerNorm | None = None
        self.fc_norm: nn.LayerNorm | None = nn.LayerNorm(dim, eps=1e-6)
        # The position table of the last token count, kept on the device it was built on.
        # A plain attribute, not a buffer: buffers are saved, averaged by the trainer's
        # weight EMA and broadcast by DDP, and the token count follows the input's size.
        self._positions: torch.Tensor | None = None

    def norm_tokens(self, on_tokens: bool) -> None:
        """Puts the final norm on each token before the mean (`norm`) or on the mean
        (`fc_norm`), keeping its weights."""
        final = self.norm if self.norm is not None else self.fc_norm
        self.norm, self.fc_norm = (final, None) if on_tokens else (None, final)

    def positions(self, count: int, device: torch.device) -> torch.Tensor:
        """The (count, dim) position table on `device`, built only when the token count
        or the device differs from the last call's."""
        table = self._positions
        if table is None or table.shape[0] != count or table.device != device:
            table = self._positions = sincos_positions(count, self.dim, device)
        return table

    def tokens(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(clips.transpose(1, 2)).flatten(2).transpose(1, 2)
        return x + self.positions(x.shape[1], x.device).to(x.dtype)

    def features(
        self, clips: torch.Tensor, taps: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The clip features (B, dim) and the mean token of each tapped block (B, dim)."""
        x, tapped = self.tokens(clips), []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in taps:
                tapped.append(x.mean(dim=1))
        if self.norm is not None:
            return self.norm(x).mean(dim=1), tapped
        assert self.fc_norm is not None
        return self.fc_norm(x.mean(dim=1)), tapped

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.features(clips)[0]


# VideoMAE-v2 sizes: (dim, depth, heads, MLP hidden, patch). ViT-g has 14-pixel patches
# (VideoMAE-v2's vit_giant_patch14_224: 8 x 16 x 16 = 2048 tokens at 224), the others 16.
VIT_SIZES = {
    "s": (384, 12, 6, 1536, 16),
    "b": (768, 12, 12, 3072, 16),
    "l": (1024, 24, 16, 4096, 16),
    "g": (1408, 40, 16, 6144, 14),
}


class _TemporalAdapter(nn.Module):
    """A bottleneck adapter mixing one tapped feature along a video's snippets."""

    def __init__(self, dim: int, hidden: int, long_range: bool):
        super().__init__()
        self.down, self.up = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.long_range = long_range
        if long_range:
            self.mix = nn.MultiheadAttention(hidden, num_heads=4, batch_first=True)
        else:
            self.mix = nn.Conv1d(hidden, hidden, 3, padding=1, groups=hidden)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """(L, dim) features of a video's L snippets, in time order -> (L, dim)."""
        x = nn.functional.gelu(self.down(sequence))
        if self.long_range:
            x = x + self.mix(x[None], x[None], x[None], need_weights=False)[0][0]
        else:
            x = x + self.mix(x.T[None])[0].T
        return self.up(nn.functional.gelu(x))


class LoSA(nn.Module):
    """A frozen video backbone with LoSA adapters: (L, F, 3, H, W) snippets of one video,
    in time order -> (L, dim) features. Only the adapters and their gates train.

    The two stages run apart too: `frozen` on any slice of the snippets (the backbone sees
    each snippet alone), `fuse` on the whole video's outputs (the adapters mix snippets).
    """

    def __init__(self, backbone: VideoViT, taps: tuple[int, ...] | None = None, hidden: int = 64):
        super().__init__()
        depth = len(backbone.blocks)
        self.taps = taps or tuple(
            sorted({depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1})
        )
        self.backbone = backbone.requires_grad_(False)
        self.dim, self.frames = backbone.dim, backbone.frames
        self.short = nn.ModuleList(_TemporalAdapter(self.dim, hidden, False) for _ in self.taps)
        self.long = nn.ModuleList(_TemporalAdapter(self.dim, hidden, True) for _ in self.taps)
        self.gates = nn.Parameter(torch.zeros(2, len(self.taps)))

    def frozen(self, snippets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's features (B, dim) of float snippets and its tapped features
        (B, taps, dim), without gradients."""
        self.backbone.eval()
        with torch.no_grad():
            feature, tapped = self.backbone.features(snippets, self.taps)
        return feature, torch.stack(tapped, dim=1)

    def fuse(self, feature: torch.Tensor, tapped: torch.Tensor) -> torch.Tensor:
        """A whole video's backbone features (L, dim) plus its gated adapters' outputs over
        the tapped features (L, taps, dim)."""
        gates = torch.tanh(self.gates)
        for index in range(len(self.taps)):
            tap = tapped[:, index]
            feature = (
                feature
                + gates[0, index] * self.short[index](tap)
                + gates[1, index] * self.long[index](tap)
            )
        return feature

    def forward(self, snippets: torch.Tensor) -> torch.Tensor:
        return self.fuse(*self.frozen(snippets))
