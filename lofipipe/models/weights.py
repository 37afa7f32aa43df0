"""Encoder weights from any storage URL, in the layouts they are published in.

Checkpoints load with `torch.load(weights_only=True)`: tensors and plain containers only,
never code. Accepted layouts: plain ResNet state dicts, the TSM release (keys under
`module.base_model.`, shifted convolutions as `conv1.net`), checkpoints nested under
`state_dict`, `model` or `module` (VideoMAE-v2), and lofipipe's own (`encoder`).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lofipipe.errors import InputError, one_line
from lofipipe.models.registry import Encoder, build_encoder
from lofipipe.storage import Store

# Wrappers that training code puts around a model's own parameter names.
_PREFIXES = ("module.", "base_model.")
# Classifier heads of the published checkpoints: not part of an encoder.
_HEADS = ("fc.", "new_fc.", "head.", "classifier.")
_NESTING = ("state_dict", "model", "module", "encoder")
_SHOWN = 8  # keys listed in a mismatch error


def read_checkpoint(url: str, options: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in a checkpoint and the SHA-256 of the checkpoint's bytes.

    Raises:
        InputError: not a readable weights-only checkpoint, or no state dict inside.
    """
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
    return _state_dict(checkpoint, name), hashlib.sha256(data).hexdigest()


def _state_dict(checkpoint: Any, name: str) -> dict[str, torch.Tensor]:
    while isinstance(checkpoint, Mapping):
        nested = next((key for key in _NESTING if isinstance(checkpoint.get(key), Mapping)), None)
        if nested is None:
            break
        checkpoint = checkpoint[nested]
    if not isinstance(checkpoint, Mapping) or not any(
        isinstance(value, torch.Tensor) for value in checkpoint.values()
    ):
        raise InputError(f"{name}: no state dict of tensors inside")
    return {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}


def _own_name(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key.replace(".net.", ".")  # TSM wraps each shifted conv as `<conv>.net`


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
    """Loads published or lofipipe weights into `model` by name.

    Raises:
        InputError: listing the missing and unexpected keys, or a shape that differs.
    """
    mapped = {_own_name(key): value for key, value in state.items()}
    mapped = {key: value for key, value in mapped.items() if not key.startswith(_HEADS)}
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
    # A model on the meta device (a check of names and shapes) takes the tensors as they
    # are; a real one copies them into its own.
    model.load_state_dict(mapped, strict=True, assign=any(p.is_meta for p in model.parameters()))


def build_weighted_encoder(
    name: str, losa: bool, checkpoint: str | None, options: Mapping[str, Any], seed: int
) -> Encoder:
    """The encoder with its checkpoint's weights, or random ones drawn from `seed`."""
    torch.manual_seed(seed)
    encoder = build_encoder(name, losa)
    if checkpoint:
        load_encoder_weights(encoder, read_checkpoint(checkpoint, options)[0], checkpoint, losa)
    return encoder


def load_encoder_weights(encoder: Encoder, state, checkpoint: str, losa: bool) -> None:
    """Loads a checkpoint's state into `encoder` (a LoSA encoder also takes backbone-only
    weights)."""
    label = checkpoint.rsplit("/", 1)[-1]
    try:
        load_weights(encoder.net, state, label)
    except InputError:
        if not losa:
            raise
        load_weights(encoder.net.backbone, state, label)  # backbone-only weights
