"""Measured memory of a training step, and the largest batch per fidelity that fits.

A step is real: the mode's model (encoder and head, LoSA adapters and head, or the head
alone) takes a batch of synthetic videos at a fidelity through forward, backward and an
AdamW update. On a GPU the figure is CUDA's peak allocation. On CPU each step runs in a
fresh Python process (an allocator that kept the memory of an earlier step would hide the
next one's), which warms torch up, then reports how far its peak resident memory (VmHWM,
reset through /proc/self/clear_refs) rose above what it held before the model was built:
model, optimizer state, inputs and activations all count, as on a GPU.

The step is the one training runs: one worker's share of the batch, with the run's
activation checkpointing, precision, loss scaling and gradient clipping. A step that runs
out of memory (CUDA's OOM error; on CPU a MemoryError or the kernel's OOM killer) is a
batch that does not fit, not a failure of the plan.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import signal
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
from lofipipe.training.snippet_detector import SnippetDetector, freeze_batchnorm
from lofipipe.training.trainer import head_losses, optimizer_step, parameter_groups

_CLASSES = 20  # synthetic labels; the head's classifier is a small part of its memory
# A batch fits when its step measured this far under the budget: the same step measured
# again varies by a few percent (allocation order, thread timing).
MARGIN = 0.95
_OUT_OF_MEMORY = "out of memory"  # what a CPU measurement prints when the step did not fit


def _proc_kb(path: str, field: str) -> int:
    """A `field: N kB` line of a /proc file (status, meminfo)."""
    with open(path) as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ConfigError(f"cannot read {field} from {path}")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident size
    except OSError as error:
        raise ConfigError(
            f"measuring CPU memory needs Linux's /proc/self/clear_refs ({error})"
        ) from None


def synthetic_video(fidelity: Fidelity, rng: np.random.Generator) -> VideoSnippets:
    """A video of random uint8 snippets at `fidelity` with one action."""
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


@dataclass(frozen=True)
class StepSettings:
    """How training runs a step, which the measured step must match."""

    recompute: bool = False  # train.activation_checkpointing
    precision: str = "fp32"  # resolved train.precision (fp32, bf16, fp16)


def _step(
    mode: str,
    encoder_name: str,
    fidelity: Fidelity,
    batch: int,
    head: HeadConfig,
    device: torch.device,
    settings: StepSettings,
) -> None:
    """One training step of `mode` on `batch` synthetic videos at `fidelity`, as a worker
    of a run trains it (checkpointing, precision, loss scaling and clipping included)."""
    rng = np.random.default_rng(0)
    encoder = build_encoder(encoder_name, losa=mode == "losa")
    tal = TALHead.from_config(encoder.dim, _CLASSES, head)
    videos = [synthetic_video(fidelity, rng) for _ in range(batch)]
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
        model = SnippetDetector(encoder, tal, settings.recompute, settings.precision).to(device)
        freeze_batchnorm(encoder)  # as LofiTrainer trains
        output, targets = model(videos, head.levels)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-4)
    scaler = torch.amp.GradScaler(
        device.type, enabled=mode != "head" and settings.precision == "fp16"
    )
    loss, _ = head_losses(output, targets, 1)
    optimizer_step(loss, model, optimizer, scaler, clip_grad_norm=1.0)


def step_peak_bytes(
    mode: str,
    encoder: str,
    fidelity: Fidelity,
    batch: int,
    head: HeadConfig,
    settings: StepSettings = StepSettings(),
) -> int | None:
    """Peak memory of one training step of one worker (see the module doc); None when
    it ran out of memory: the batch does not fit."""
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
                "settings": dataclasses.asdict(settings),
            }
        )
        done = subprocess.run(
            [sys.executable, "-m", __name__, request],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        )
        # The kernel's OOM killer ends a process that outgrew the machine with SIGKILL.
        if done.returncode == -signal.SIGKILL or done.stdout.strip() == _OUT_OF_MEMORY:
            return None
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
    try:
        _step(mode, encoder, fidelity, batch, head, torch.device("cuda"), settings)
    except Exception as error:
        if _out_of_memory(error):
            return None
        raise
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    return torch.cuda.max_memory_allocated() - before


def _out_of_memory(error: Exception) -> bool:
    """Whether `error` says an allocation failed: CUDA's OOM error, Python's (numpy's)
    MemoryError, or torch's CPU allocator giving up."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def device_free_bytes() -> int:
    """Memory a step can take now: free GPU memory, or the machine's available memory
    (Linux's MemAvailable) on CPU."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info()[0]
    return _proc_kb("/proc/meminfo", "MemAvailable") * 1024


def _measure_here(request: dict) -> int | None:
    """CPU: one step in this (fresh) process; the rise of its peak resident memory."""
    warm = torch.randn(2, 3, 4, 8, 8, requires_grad=True)  # torch's own start-up memory
    torch.nn.functional.conv3d(warm, torch.randn(4, 3, 3, 3, 3), padding=1).sum().backward()
    gc.collect()
    _reset_peak()
    before = _proc_kb("/proc/self/status", "VmRSS")
    try:
        _step(
            request["mode"],
            request["encoder"],
            Fidelity(**request["fidelity"]),
            request["batch"],
            HeadConfig(**request["head"]),
            torch.device("cpu"),
            StepSettings(**request["settings"]),
        )
    except Exception as error:
        if _out_of_memory(error):
            return None
        raise
    return (_proc_kb("/proc/self/status", "VmHWM") - before) * 1024


@dataclass
class FidelityPlan:
    fidelity: Fidelity
    batch_size: int  # the global batch over all workers; 0: not even one video a worker fits
    peak_bytes: int  # one worker's step at batch_size (at 1 video when nothing fits)
    measured: dict[int, int | None]  # videos per worker -> bytes (None: out of memory)


def plan_fidelity(
    mode: str,
    encoder: str,
    fidelity: Fidelity,
    budget: int,
    head: HeadConfig,
    largest: int = 256,
    report: Callable[[int, int | None], None] = lambda batch, peak: None,
    settings: StepSettings = StepSettings(),
    workers: int = 1,
) -> FidelityPlan:
    """The largest global batch (up to `largest`) that `workers` workers train with each
    worker's step within `budget` bytes (with `MARGIN`): a run splits its batch over its
    workers, so each measures its share. Videos per worker double until a step does not
    fit (or runs out of memory), then a binary search between the last two."""
    measured: dict[int, int | None] = {}

    def fits(share: int) -> bool:
        measured[share] = step_peak_bytes(mode, encoder, fidelity, share, head, settings)
        report(share, measured[share])
        peak = measured[share]
        return peak is not None and peak <= budget * MARGIN

    most = max(1, largest // workers)
    if not fits(1):
        return FidelityPlan(fidelity, 0, measured[1] or 0, measured)
    low, high = 1, None
    while high is None and low < most:
        candidate = min(low * 2, most)
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
    return FidelityPlan(fidelity, low * workers, measured[low] or 0, measured)


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
    peak = _measure_here(json.loads(sys.argv[1]))
    print(_OUT_OF_MEMORY if peak is None else peak)
