"""Moving host tensors to the device that computes on them."""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`. From the host to a GPU the copy is asynchronous, which needs
    page-locked memory: the tensor is pinned first (a copy from pageable memory with
    `non_blocking` would silently be a synchronous one)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
