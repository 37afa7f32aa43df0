"""Encoder weights from any storage URL, in the layouts they are published in.

Checkpoints load with `torch.load(weights_only=True)`: tensors and plain containers only,
never code. The state dict is found under `state_dict`, `model`, `module` or `encoder`;
its layout is detected from its keys and renamed to lofipipe's names
(`checkpoint_layouts.py` lists the layouts: VideoMAE-v1/v2 fine-tuned and pre-trained, the
TSM release, torchvision's ResNet, MMAction2's ResNetTSM and VisionTransformer, and
lofipipe's own). BatchNorm `num_batches_tracked` counters may be absent, as PyTorch's own
loading allows; anything else that does not fit is one `InputError` line.

A feature from a VideoMAE pre-trained checkpoint is what the official pre-training encoder
computes on all tokens (no masking), each token through its final `norm`, averaged over
the tokens; a fine-tuned checkpoint's is `fc_norm` of the mean token, as its classifier
sees it.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from lofipipe.errors import InputError, one_line
from lofipipe.models.checkpoint_layouts import ConvertedCheckpoint, convert_checkpoint
from lofipipe.models.registry import ENCODERS, Encoder, build_encoder
from lofipipe.models.vit import VideoViT
from lofipipe.schemas.preprocess import Preprocess
from lofipipe.storage import Store

_NESTING = ("state_dict", "model", "module", "encoder")
_SHOWN = 8  # keys listed in a mismatch error
_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # buffers, not weights


def read_checkpoint(url: str, options: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in a checkpoint and the SHA-256 of the checkpoint's bytes.

    Raises:
        InputError: not a readable weights-only checkpoint, or no state dict inside.
    """
    state, _, digest = _read_state(url, options)
    return state, digest


def _read_state(
    url: str, options: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], tuple[str, ...], str]:
    """The state dict, the keys it was nested under, and the SHA-256 of the bytes."""
    parent, _, name = url.rpartition("/")
    try:
        data = Store(parent or ".", options).read_bytes(name)
    except FileNotFoundError:
        raise InputError(f"checkpoint not found: {url}") from None
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise InputError(
            f"{name}: not a weights-only PyTorch checkpoint ({one_line(error)})"
        ) from None
    state, nesting = _state_dict(checkpoint, name)
    return state, nesting, hashlib.sha256(data).hexdigest()


def _state_dict(checkpoint: Any, name: str) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    nesting: list[str] = []
    while isinstance(checkpoint, Mapping):
        nested = next((key for key in _NESTING if isinstance(checkpoint.get(key), Mapping)), None)
        if nested is None:
            break
        checkpoint = checkpoint[nested]
        nesting.append(nested)
    if not isinstance(checkpoint, Mapping) or not any(
        isinstance(value, torch.Tensor) for value in checkpoint.values()
    ):
        raise InputError(f"{name}: no state dict of tensors inside")
    state = {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}
    return state, tuple(nesting)


def load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], name: str, nesting: tuple[str, ...] = ()
) -> ConvertedCheckpoint:
    """Loads published or lofipipe weights into `model` by name, in any known layout.

    Returns:
        The checkpoint as read: its layout, the keys left out (heads, decoders) and notes.
    Raises:
        InputError: one line listing the missing and unexpected keys, or a shape that differs.
    """
    return _load_converted(model, convert_checkpoint(state, nesting), name)


def _load_converted(
    model: nn.Module, converted: ConvertedCheckpoint, name: str
) -> ConvertedCheckpoint:
    mapped = dict(converted.state)
    switched = _match_final_norms(model, mapped)
    try:
        counters = _fill_batch_counters(model, mapped)
        _check_fit(model, mapped, name)
    except InputError:
        for vit in switched:  # leave the model as it was
            vit.norm_tokens(vit.norm is None)
        raise
    # A model on the meta device (a check of names and shapes) takes the tensors as they
    # are; a real one copies them into its own.
    model.load_state_dict(mapped, strict=True, assign=any(p.is_meta for p in model.parameters()))
    if counters:
        note = f"no BatchNorm num_batches_tracked ({counters}): the model's own kept"
        converted = replace(converted, notes=(*converted.notes, note))
    return converted


def _match_final_norms(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[VideoViT]:
    """Puts each ViT's final norm where the checkpoint has it (`norm` or `fc_norm`)."""
    switched = []
    for path, module in model.named_modules():
        if not isinstance(module, VideoViT):
            continue
        prefix = f"{path}." if path else ""
        on_tokens = f"{prefix}norm.weight" in state
        if on_tokens != (f"{prefix}fc_norm.weight" in state) and on_tokens != (
            module.norm is not None
        ):
            module.norm_tokens(on_tokens)
            switched.append(module)
    return switched


def _fill_batch_counters(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Gives BatchNorm counters the checkpoint lacks the model's own values, as
    `nn.BatchNorm2d` does when PyTorch loads a state dict without them."""
    absent = [
        key
        for key, value in model.state_dict().items()
        if key.endswith(".num_batches_tracked") and key not in state
    ]
    own = model.state_dict()
    for key in absent:
        state[key] = own[key]
    return len(absent)


def _check_fit(model: nn.Module, mapped: Mapping[str, torch.Tensor], name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"{name}: does not fit the model: missing {len(missing)} keys "
            f"{missing[:_SHOWN]}, unexpected {len(unexpected)} keys {unexpected[:_SHOWN]}"
        )
    for key, value in mapped.items():
        if value.shape != expected[key].shape:
            raise InputError(
                f"{name}: {key} has shape {tuple(value.shape)}, the model "
                f"expects {tuple(expected[key].shape)}"
            )


def build_weighted_encoder(
    name: str,
    losa: bool,
    checkpoint: str | None,
    options: Mapping[str, Any],
    seed: int,
    preprocess: Preprocess | None = None,
) -> Encoder:
    """The encoder with its checkpoint's weights, or random ones drawn from `seed`,
    normalizing as `preprocess` says (default: its own preset)."""
    torch.manual_seed(seed)
    encoder = build_encoder(name, losa, preprocess)
    if checkpoint:
        load_encoder_checkpoint(encoder, checkpoint, options, losa)
    return encoder


def load_encoder_checkpoint(
    encoder: Encoder, url: str, options: Mapping[str, Any], losa: bool
) -> tuple[ConvertedCheckpoint, str]:
    """Reads the checkpoint at `url` into `encoder`: the checkpoint as read (its layout,
    what was left out) and the SHA-256 of its bytes."""
    state, nesting, digest = _read_state(url, options)
    return load_encoder_weights(encoder, state, url, losa, nesting), digest


def load_encoder_weights(
    encoder: Encoder,
    state: Mapping[str, torch.Tensor],
    checkpoint: str,
    losa: bool,
    nesting: tuple[str, ...] = (),
) -> ConvertedCheckpoint:
    """Loads a checkpoint's state (found under `nesting`) into `encoder`; a LoSA encoder
    also takes backbone-only weights."""
    label = checkpoint.rsplit("/", 1)[-1]
    converted = convert_checkpoint(state, nesting)
    try:
        return _load_converted(encoder.net, converted, label)
    except InputError:
        if not losa:
            raise
        backbone = encoder.net.backbone  # backbone-only weights
        assert isinstance(backbone, nn.Module)
        return _load_converted(backbone, converted, label)


@dataclass(frozen=True)
class CheckpointReport:
    """What `lofipipe weights inspect` says about a checkpoint."""

    checkpoint: str  # the file's name
    sha256: str
    layout: str
    description: str
    fits: tuple[str, ...]  # registry names (`vit_s --losa` for LoSA weights)
    parameters: int  # weights, without BatchNorm statistics
    tensors: int
    ignored: dict[str, int] = field(default_factory=dict)  # what it is -> keys
    notes: tuple[str, ...] = ()
    mismatch: str = ""  # the closest encoder's error when none fits

    def lines(self) -> list[str]:
        """The lines the command prints."""
        ignored = ", ".join(f"{what} {count}" for what, count in self.ignored.items())
        out = [
            f"checkpoint  {self.checkpoint}  sha256:{self.sha256[:12]}",
            f"layout      {self.layout}: {self.description}",
            f"fits        {', '.join(self.fits) or 'no encoder: ' + self.mismatch}",
            f"parameters  {self.parameters:,} in {self.tensors} tensors",
            f"ignored     {sum(self.ignored.values())} keys" + (f": {ignored}" if ignored else ""),
        ]
        return out + [f"note        {note}" for note in self.notes]


def inspect_checkpoint(url: str, options: Mapping[str, Any]) -> CheckpointReport:
    """Reads a checkpoint, names its layout and tries it on every registered encoder (built
    on the meta device, so no memory is spent on weights).

    Raises:
        InputError: not a readable weights-only checkpoint, or no state dict inside.
    """
    state, nesting, digest = _read_state(url, options)
    label = url.rsplit("/", 1)[-1]
    converted = convert_checkpoint(state, nesting)
    fits: list[str] = []
    notes = converted.notes
    closest: tuple[int, str] | None = None
    for name in ENCODERS:
        losa = converted.name == "lofipipe-losa"
        if losa and not name.startswith("vit_"):
            continue
        with torch.device("meta"):
            encoder = build_encoder(name, losa)
        try:
            notes = _load_converted(encoder.net, converted, label).notes
        except InputError as error:
            distance = len(set(encoder.net.state_dict()) ^ set(converted.state))
            if closest is None or distance < closest[0]:
                closest = (distance, str(error))
            continue
        fits.append(f"{name} --losa" if losa else name)
    weights = {
        key: value for key, value in converted.state.items() if not key.endswith(_STATISTICS)
    }
    return CheckpointReport(
        checkpoint=label,
        sha256=digest,
        layout=converted.name,
        description=converted.layout.description,
        fits=tuple(fits),
        parameters=sum(value.numel() for value in weights.values()),
        tensors=len(converted.state),
        ignored=dict(converted.ignored),
        notes=notes,
        mismatch="" if fits or closest is None else closest[1],
    )
