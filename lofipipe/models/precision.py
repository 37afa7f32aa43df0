"""The numeric precision of encoder passes: float32, or autocast to bfloat16 or float16.

`auto` is resolved once, on the driver, from whether the job runs on GPUs (bf16 there,
fp32 on CPUs), so that feature fingerprints and a run's saved config name what was
computed. float16 training needs loss scaling (`torch.amp.GradScaler`); bfloat16 has
float32's range and does not.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from lofipipe.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(choice: str, gpu: bool) -> str:
    """`choice`, with `auto` made concrete: bf16 on GPUs, fp32 on CPUs."""
    if choice != "auto":
        return choice
    return "bf16" if gpu else "fp32"


def check_precision(precision: str, device: torch.device) -> None:
    """Refuses bf16 on a GPU that computes it only by emulation (before Ampere)."""
    if (
        precision == "bf16"
        and device.type == "cuda"
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        raise ConfigError(
            f"{torch.cuda.get_device_name(device)} has no bf16 arithmetic: set precision "
            f"to fp16 (trained with loss scaling) or fp32"
        )


def autocast(precision: str, device: torch.device) -> AbstractContextManager[None]:
    """Autocast to `precision` on `device` (off for fp32)."""
    return torch.autocast(
        device.type, dtype=DTYPES.get(precision, torch.float32), enabled=precision in DTYPES
    )
