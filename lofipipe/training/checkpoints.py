"""A run's checkpoints: `runs/<run>/checkpoints/epoch-NNNN.pt`, each written atomically
(a half-written checkpoint never appears under its name, so it is never picked up), the
newest few kept. A restarted worker group and a rerun of the command both resume from
the newest one."""

from __future__ import annotations

import io
from typing import Any

import torch

from lofipipe.errors import InputError, one_line
from lofipipe.layout import CHECKPOINT_PATTERN, checkpoint_epoch, checkpoint_path, checkpoints_dir
from lofipipe.storage import Store


def save_checkpoint(root: Store, run: str, epoch: int, state: dict[str, Any], keep: int) -> str:
    """Writes the state after `epoch` epochs, then drops all but the newest `keep`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = checkpoint_path(run, epoch)
    root.write_bytes(path, buffer.getvalue())
    for old in root.list(checkpoints_dir(run), pattern=CHECKPOINT_PATTERN)[:-keep]:
        root.remove(old)
    return path


def latest_epoch(root: Store, run: str) -> int:
    """Epochs done by the newest committed checkpoint (0 without one)."""
    found = root.list(checkpoints_dir(run), pattern=CHECKPOINT_PATTERN)
    return checkpoint_epoch(found[-1]) if found else 0


def latest_checkpoint(root: Store, run: str) -> dict[str, Any] | None:
    """The newest committed checkpoint's state (weights-only load), or None."""
    found = root.list(checkpoints_dir(run), pattern=CHECKPOINT_PATTERN)
    if not found:
        return None
    try:
        return torch.load(
            io.BytesIO(root.read_bytes(found[-1])), map_location="cpu", weights_only=True
        )
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise InputError(
            f"{root.url_of(found[-1])}: not a readable checkpoint ({one_line(error)})"
        ) from None
