"""Pixel preprocessing: how a decoded frame becomes an encoder's S x S input.

A `Preprocess` has two parts. The *spatial* part (how the upright frame is resized and
cropped, and with which interpolation) is applied while snippets are decoded, so it is part
of every shard's lineage. The *normalization* (the encoder's mean and std, or /255 only) is
applied by the encoder (`models.registry.Encoder`), so only features depend on it. Both go
into the feature fingerprint.

The named presets reproduce published test-time recipes:

- `tsm-test`: TSM's and MMAction2's test pipeline (MMAction2 `Resize(scale=(-1, 256))`,
  `CenterCrop(224)`, `Normalize` with ImageNet mean/std; cv2 `INTER_LINEAR`). For size S:
  the short side becomes round(S * 256 / 224) (256 at S = 224), the long side keeps the
  aspect (int(long * scale + 0.5), as mmcv's `rescale_size`), bilinear without
  anti-aliasing and with half-pixel centres, then a centre crop of S x S at
  ((W - S) // 2, (H - S) // 2); the encoder's mean/std.
- `videomaev2-tad`: VideoMAE-v2's TAD feature script (OpenGVLab/VideoMAEv2
  `extract_tad_feature.py`: `ToFloatTensorInZeroOne`, then `torch.nn.functional.interpolate`
  to (224, 224), mode bilinear, align_corners=False, no anti-aliasing): bilinear to S x S
  (aspect not kept), pixels / 255, no mean/std.
- `squash`: lofipipe's own: bilinear to S x S, the encoder's mean/std.
- `squash-fast`: `squash` with FFmpeg's FAST_BILINEAR scaler inside the RGB conversion
  (lofipipe's behaviour before presets): cheaper on large frames for `jpeg` and `raw` (not
  for `h264`, whose exact YUV resize costs less), but up to tens of levels off true
  bilinear (docs/materialize.md gives the measured differences).

Snippets are stored as uint8, so every preset rounds once to whole levels where the
VideoMAE-v2 script keeps floats: at most half a level (1/510) more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lofipipe.errors import ConfigError

Spatial = Literal["squash", "short-side-crop"]
Interpolation = Literal["bilinear", "fast-bilinear"]
Normalization = Literal["encoder", "unit"]


@dataclass(frozen=True)
class Preprocess:
    """How frames become an encoder's input (see the module docstring)."""

    name: str
    spatial: Spatial = "squash"
    interpolation: Interpolation = "bilinear"
    normalization: Normalization = "encoder"  # encoder: its mean/std; unit: pixels / 255
    # short-side-crop: the short side becomes round(S * resize / crop), then an S x S crop
    # (TSM and MMAction2 test at S = 224: short side 256, crop 224)
    resize: int = 256
    crop: int = 224

    @property
    def spatial_content(self) -> dict[str, Any]:
        """What snippet pixels depend on (kept in each shard's lineage)."""
        content: dict[str, Any] = {"spatial": self.spatial, "interpolation": self.interpolation}
        if self.spatial == "short-side-crop":
            content.update(resize=self.resize, crop=self.crop)
        return content

    def content(self, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
        """Everything features depend on, with the normalization the encoder applies."""
        mean, std = self.normalization_for(mean, std)
        return {"preset": self.name, **self.spatial_content, "mean": mean, "std": std}

    def normalization_for(
        self, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) applied to pixels in [0, 1], given the encoder's own."""
        if self.normalization == "unit":
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return tuple(mean), tuple(std)

    def geometry(self, width: int, height: int, size: int) -> tuple[int, int, int, int]:
        """(resized width, resized height, left, top) of the S x S output in the resized
        upright frame of `width` x `height`."""
        if self.spatial == "squash":
            return size, size, 0, 0
        short = round(size * self.resize / self.crop)
        scale = short / min(width, height)
        if width <= height:
            resized = short, max(size, int(height * scale + 0.5))
        else:
            resized = max(size, int(width * scale + 0.5)), short
        return resized[0], resized[1], (resized[0] - size) // 2, (resized[1] - size) // 2


PREPROCESS_PRESETS: dict[str, Preprocess] = {
    preset.name: preset
    for preset in (
        Preprocess("squash"),
        Preprocess("squash-fast", interpolation="fast-bilinear"),
        Preprocess("tsm-test", spatial="short-side-crop"),
        Preprocess("videomaev2-tad", normalization="unit"),
    )
}


def preprocess_preset(name: str, key: str = "preprocess") -> Preprocess:
    """A preset by name.

    Raises:
        ConfigError: naming `key` and the presets.
    """
    if name not in PREPROCESS_PRESETS:
        raise ConfigError(
            f"{key}: unknown preprocessing {name!r} (presets: {', '.join(PREPROCESS_PRESETS)})"
        )
    return PREPROCESS_PRESETS[name]


def presets_with(spatial: dict[str, Any]) -> list[str]:
    """The presets whose spatial part is `spatial` (as a shard's lineage keeps it)."""
    return [name for name, p in PREPROCESS_PRESETS.items() if p.spatial_content == spatial]
