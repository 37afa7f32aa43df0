"""Measured memory of a training step, and the largest batch per fidelity that fits.

A step is real: the mode's model (encoder and head, LoSA adapters and head, or the head
alone) takes a batch of synthetic videos at a fidelity through forward, backward and an
AdamW update. On a GPU the figure is CUDA's peak allocation. On CPU each step runs in a
fresh Python process (an allocator that kept the memory of an earlier step would hide the
next one's), which warms torch up, then reports how far its peak resident memory (VmHWM,
reset through /proc/self/clear_refs) rose above what it held before the model was built:
model, optimizer state, inputs and activations all count, as on a GPU.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import yaml

from lofipipe.data.snippets import VideoSnippets
from lofipipe.errors import ConfigError
from lofipipe.models.registry import ENCODERS, build_encoder
from lofipipe.models.tal_head import TALHead
from lofipipe.schemas.config import HeadConfig, config_to_dict
from lofipipe.schemas.schedule import Fidelity, Schedule
from lofipipe.training.feature_set import VideoFeatures, collate
from lofipipe.training.snippet_detector import SnippetDetector
from lofipipe.training.trainer import head_losses, parameter_groups

_CLASSES = 20  # synthetic labels; the head's classifier is a small part of its memory
# A batch fits when its step measured this far under the budget: the same step measured
# again varies by a few percent (allocation order, thread timing).
MARGIN = 0.95


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ConfigError(f"cannot read {field} from /proc/self/status")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident size
    except OSError as error:
        raise ConfigError(
            f"measuring CPU memory needs Linux's /proc/self/clear_refs ({error})"
        ) from None


def _synthetic(fidelity: Fidelity, rng: np.random.Generator) -> VideoSnippets:
    count = fidelity.snippets
    start = np.arange(count, dtype=np.float64)
    return VideoSnippets(
        video_id="synthetic",
        fidelity=fidelity.name,
        frames=torch.from_numpy(
            rng.integers(
                0, 256, (count, fidelity.frames, 3, fidelity.size, fidelity.size), dtype=np.uint8
            )
        ),
        start=start,
        end=start + 1,
        center=start + 0.5,
        frame_times=np.zeros((count, fidelity.frames)),
        segments=np.array([[count * 0.25, count * 0.6]]),
        labels=np.array([0]),
    )


def _step(
    mode: str,
    encoder_name: str,
    fidelity: Fidelity,
    batch: int,
    head: HeadConfig,
    device: torch.device,
) -> None:
    """One training step of `mode` on `batch` synthetic videos at `fidelity`."""
    rng = np.random.default_rng(0)
    encoder = build_encoder(encoder_name, losa=mode == "losa")
    tal = TALHead.from_config(encoder.dim, _CLASSES, head)
    videos = [_synthetic(fidelity, rng) for _ in range(batch)]
    if mode == "head":
        model = tal.to(device)
        features = [
            VideoFeatures(
                v.video_id,
                rng.normal(size=(fidelity.snippets, encoder.dim)).astype(np.float32),
                v.start,
                v.end,
                v.segments,
                v.labels,
            )
            for v in videos
        ]
        targets = collate(features, _CLASSES, head.levels)
        output = model(targets.features.to(device), targets.mask.to(device))
    else:
        model = SnippetDetector(encoder, tal).to(device)
        for module in encoder.modules():  # as LofiTrainer trains: frozen statistics
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        output, targets = model(videos, head.levels)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-4)
    loss, _ = head_losses(output, targets, 1)
    loss.backward()
    optimizer.step()


def step_peak_bytes(
    mode: str, encoder: str, fidelity: Fidelity, batch: int, head: HeadConfig
) -> int:
    """Peak memory of one training step (see the module doc)."""
    if encoder not in ENCODERS:
        raise ConfigError(f"unknown encoder {encoder!r} (known: {', '.join(ENCODERS)})")
    if not torch.cuda.is_available():
        request = json.dumps(
            {
                "mode": mode,
                "encoder": encoder,
                "batch": batch,
                "fidelity": dataclasses.asdict(fidelity),
                "head": dataclasses.asdict(head),
            }
        )
        done = subprocess.run(
            [sys.executable, "-m", __name__, request],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(
                f"measuring a {mode} step of {encoder} at {fidelity.name}, batch "
                f"{batch}, failed: {last}"
            )
        return int(done.stdout.split()[-1])
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    _step(mode, encoder, fidelity, batch, head, torch.device("cuda"))
    peak = torch.cuda.max_memory_allocated() - before
    gc.collect()
    return peak


def _measure_here(request: dict) -> int:
    """CPU: one step in this (fresh) process; the rise of its peak resident memory."""
    warm = torch.randn(2, 3, 4, 8, 8, requires_grad=True)  # torch's own start-up memory
    torch.nn.functional.conv3d(warm, torch.randn(4, 3, 3, 3, 3), padding=1).sum().backward()
    gc.collect()
    _reset_peak()
    before = _status_kb("VmRSS")
    _step(
        request["mode"],
        request["encoder"],
        Fidelity(**request["fidelity"]),
        request["batch"],
        HeadConfig(**request["head"]),
        torch.device("cpu"),
    )
    return (_status_kb("VmHWM") - before) * 1024


@dataclass
class FidelityPlan:
    fidelity: Fidelity
    batch_size: int  # 0: not even one video fits
    peak_bytes: int  # measured at batch_size (or at 1 when nothing fits)
    measured: dict[int, int]  # batch -> bytes


def plan_fidelity(
    mode: str,
    encoder: str,
    fidelity: Fidelity,
    budget: int,
    head: HeadConfig,
    largest: int = 256,
    report: Callable[[int, int], None] = lambda batch, peak: None,
) -> FidelityPlan:
    """The largest batch (up to `largest`) whose measured step fits `budget` bytes (with
    `MARGIN`): batch sizes double until one does not fit, then a binary search between
    the last two."""
    measured: dict[int, int] = {}

    def fits(batch: int) -> bool:
        measured[batch] = step_peak_bytes(mode, encoder, fidelity, batch, head)
        report(batch, measured[batch])
        return measured[batch] <= budget * MARGIN

    if not fits(1):
        return FidelityPlan(fidelity, 0, measured[1], measured)
    low, high = 1, None
    while high is None and low < largest:
        candidate = min(low * 2, largest)
        if fits(candidate):
            low = candidate
        else:
            high = candidate
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return FidelityPlan(fidelity, low, measured[low], measured)


def planned_schedule_yaml(schedule: Schedule, plans: list[FidelityPlan], header: str) -> str:
    """The schedule as a YAML file with each planned fidelity's batch size set."""
    sizes = {plan.fidelity.name: plan.batch_size for plan in plans if plan.batch_size}
    values = config_to_dict(schedule)

    def sized(fidelity: dict) -> dict:
        return {**fidelity, "batch_size": sizes.get(fidelity["name"], fidelity["batch_size"])}

    values["full"] = sized(values["full"])
    values["train"] = [sized(f) for f in values["train"]]
    return header + yaml.safe_dump(values, sort_keys=False)


if __name__ == "__main__":  # a measurement in a fresh process, see step_peak_bytes
    print(_measure_here(json.loads(sys.argv[1])))
