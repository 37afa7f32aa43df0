"""Encoders by name, each with the input it expects: frames per snippet, size, the
normalization of its pixels and its default preprocessing preset (schemas/preprocess.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lofipipe.errors import ConfigError
from lofipipe.models.device import to_device
from lofipipe.models.tiny import TinyVideoNet
from lofipipe.models.tsm import TSMResNet
from lofipipe.models.vit import VIT_SIZES, LoSA, VideoViT
from lofipipe.schemas.preprocess import Preprocess, preprocess_preset

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Snippets per frozen-backbone call of a LoSA encoder: a 16-frame snippet at 224 is 9.6 MB
# as float32 (a long video's, tens of GB), so only this many are ever float at once.
LOSA_CHUNK = 32
LOSA_SUFFIX = "+losa"  # an encoder's name with LoSA adapters, as feature lineages record it


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is and what it takes."""

    name: str
    build: Callable[[], nn.Module]
    frames: int  # per snippet
    size: int  # input pixels (square) at full fidelity
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Raised whenever what the encoder computes changes, so its features get a new
    # fingerprint (parameter shapes are hashed too, but not the forward pass).
    revision: int = 1
    # The preprocessing preset that reproduces the encoder's published feature recipe
    # (schemas/preprocess.py); `auto` in the config means this one.
    preprocess: str = "squash"

    def preprocessing(self, choice: str = "auto") -> Preprocess:
        """The preprocessing `choice` names (`auto`: this encoder's preset)."""
        return preprocess_preset(self.preprocess if choice == "auto" else choice)


ENCODERS: dict[str, EncoderSpec] = {
    "tiny": EncoderSpec(
        "tiny", TinyVideoNet, 8, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), revision=2
    ),  # 2: spatial maximum, 128-d
    # TSM-ResNet with 8-frame snippets at 224, ImageNet normalization (LoFi, Sec. 4.1),
    # fed as TSM's and MMAction2's test pipelines do: short side 256, centre crop 224.
    "tsm_r18": EncoderSpec(
        "tsm_r18", lambda: TSMResNet(18, 8), 8, 224, *_IMAGENET, preprocess="tsm-test"
    ),
    "tsm_r50": EncoderSpec(
        "tsm_r50", lambda: TSMResNet(50, 8), 8, 224, *_IMAGENET, preprocess="tsm-test"
    ),
    # VideoMAE-v2 ViTs: 16-frame clips at 224. Their TAD features (extract_tad_feature.py)
    # are computed on pixels / 255 without mean/std, which `videomaev2-tad` reproduces; the
    # ImageNet mean/std stay for the `squash` and `tsm-test` presets.
    **{
        f"vit_{size}": EncoderSpec(
            f"vit_{size}",
            lambda shape=shape: VideoViT(*shape),
            16,
            224,
            *_IMAGENET,
            preprocess="videomaev2-tad",
        )
        for size, shape in VIT_SIZES.items()
    },
}


class Encoder(nn.Module):
    """An encoder with its normalization: uint8 snippets (B, F, 3, S, S) -> (B, dim).

    The normalization is the preprocessing's (`preprocess`, default the spec's preset): the
    encoder's mean/std, or pixels / 255 only. With LoSA adapters the B snippets are one
    video's, in time order: the frozen backbone runs over LOSA_CHUNK of them at a time
    (each moved to the encoder's device and normalized only then), the adapters over all.
    """

    def __init__(self, spec: EncoderSpec, losa: bool = False, preprocess: Preprocess | None = None):
        super().__init__()
        self.spec, self.losa = spec, losa
        self.net = LoSA(spec.build()) if losa else spec.build()
        self.dim = self.net.dim
        # The preprocessing's normalization (its spatial part happened at decoding).
        self.preprocess = preprocess or spec.preprocessing()
        mean, std = self.preprocess.normalization_for(spec.mean, spec.std)
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 1, 3, 1, 1) * 255)

    def forward(self, snippets: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """Features of uint8 snippets.

        Args:
            recompute: with gradients on, keep no activations for the backward pass and
                compute them again then (activation checkpointing). With LoSA only the
                adapters recompute: the frozen backbone keeps nothing, so it runs once.
        """
        recompute = recompute and torch.is_grad_enabled()
        if self.losa:
            return self._adapted(snippets, recompute)
        if recompute:
            return checkpoint(self._encoded, snippets, use_reentrant=False)
        return self._encoded(snippets)

    def _normalized(self, snippets: torch.Tensor) -> torch.Tensor:
        return (snippets.float() - self.mean) / self.std

    def _encoded(self, snippets: torch.Tensor) -> torch.Tensor:
        return self.net(self._normalized(snippets))

    def _adapted(self, snippets: torch.Tensor, recompute: bool) -> torch.Tensor:
        parts = [
            self.net.frozen(self._normalized(to_device(chunk, self.mean.device)))
            for chunk in snippets.split(LOSA_CHUNK)
        ]
        feature = torch.cat([feature for feature, _ in parts])
        tapped = torch.cat([taps for _, taps in parts])
        if recompute:
            return checkpoint(self.net.fuse, feature, tapped, use_reentrant=False)
        return self.net.fuse(feature, tapped)


def build_encoder(name: str, losa: bool = False, preprocess: Preprocess | None = None) -> Encoder:
    """A freshly initialised encoder by registry name, optionally carrying LoSA adapters
    (ViTs only), normalizing as `preprocess` says (default: its own preset)."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r} (known: {', '.join(ENCODERS)})")
    if losa and not name.startswith("vit_"):
        raise ConfigError(f"{name}: LoSA adapters run beside a ViT backbone (vit_s ... vit_g)")
    return Encoder(ENCODERS[name], losa, preprocess)


def encoder_preprocess(name: str, choice: str = "auto") -> Preprocess:
    """The preprocessing `choice` (a preset, or `auto`: encoder `name`'s preset).

    Raises:
        ConfigError: an unknown encoder or preset.
    """
    if choice != "auto":
        return preprocess_preset(choice, "materialize.preprocess")
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r} (known: {', '.join(ENCODERS)})")
    return ENCODERS[name].preprocessing()


def architecture_digest(model: nn.Module) -> str:
    """A hash of a model's parameter and buffer names and shapes (works on the meta
    device, so no memory is spent)."""
    shapes = [(name, list(value.shape)) for name, value in model.state_dict().items()]
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def encoder_fingerprint(
    spec: EncoderSpec,
    weights: str,
    fidelity: Mapping[str, Any],
    architecture: str = "",
    preprocess: Mapping[str, Any] | None = None,
) -> str:
    """A short hash of what features depend on: architecture (name, revision and
    `architecture_digest`), weights (the checkpoint's SHA-256, or a note that they are
    random with their seed) and preprocessing (input fidelity, and `preprocess`: the
    spatial preprocessing and the normalization, `Preprocess.content`)."""
    record = {
        "encoder": spec.name,
        "revision": spec.revision,
        "architecture": architecture,
        "frames": spec.frames,
        "mean": spec.mean,
        "std": spec.std,
        "weights": weights,
        "fidelity": dict(fidelity),
        "preprocess": dict(preprocess) if preprocess is not None else None,
    }
    text = json.dumps(record, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
