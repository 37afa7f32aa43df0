"""Fidelities and training schedules: which snippets are materialized and how training
cycles through them.

A fidelity is (L snippets, F frames per snippet, S x S pixels). In *resize* sampling, L
counts the snippets of a whole video, split into L equal spans (ActivityNet, G-TAD
style); in *stride* sampling, frames are taken at a fixed rate and a snippet starts every
`stride` frames (THUMOS, ActionFormer style), and L counts the snippets of one training
window. A reduced fidelity with fewer snippets per window covers the same time with a
proportionally larger stride.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lofipipe.errors import ConfigError
from lofipipe.schemas.config import build, config_to_dict, read_yaml_mapping

Sampling = Literal["resize", "stride"]
Cycle = Literal["long", "short", "multigrid"]


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class Fidelity:
    """L snippets of F frames of S x S pixels."""

    name: str
    snippets: int
    frames: int = 8
    size: int = 224
    batch_size: int = 0  # this fidelity's batch, e.g. from lofipipe plan; 0: the schedule's

    def __post_init__(self) -> None:
        _check(
            bool(self.name) and self.name.replace("-", "").replace("_", "").isalnum(),
            "name",
            f"must be letters, digits, '-' or '_', got {self.name!r}",
        )
        _check(self.snippets >= 1, "snippets", "must be at least 1")
        _check(1 <= self.frames <= 256, "frames", "must be between 1 and 256")
        _check(8 <= self.size <= 1024, "size", "must be between 8 and 1024 pixels")
        _check(self.batch_size >= 0, "batch_size", "must be >= 0")

    @property
    def content(self) -> dict[str, object]:
        """What the snippets of this fidelity depend on (not how training batches them)."""
        return {
            "name": self.name,
            "snippets": self.snippets,
            "frames": self.frames,
            "size": self.size,
        }

    @property
    def pixels(self) -> int:
        """Pixels per video (resize) or window (stride): what LoFi keeps roughly constant."""
        return self.snippets * self.frames * self.size * self.size


@dataclass(frozen=True)
class Schedule:
    """The fidelities to materialize and how training cycles through them."""

    name: str
    full: Fidelity  # used for feature extraction; never while the encoder trains (LoFi)
    train: tuple[Fidelity, ...]
    sampling: Sampling = "resize"
    fps: float | None = None  # stride sampling: frames are taken at this rate
    stride: int | None = None  # stride sampling: frames between snippets at full fidelity
    cycle: Cycle = "long"
    cycle_batches: int = 16  # short cycle: switch fidelity every this many batches
    batch_size: int = 16  # long and short cycles; the base batch for multigrid

    def __post_init__(self) -> None:
        names = [f.name for f in self.fidelities]
        _check(len(set(names)) == len(names), "train", f"fidelity names repeat: {names}")
        _check(len(self.train) >= 1, "train", "needs at least one fidelity")
        _check(self.batch_size >= 1, "batch_size", "must be at least 1")
        _check(self.cycle_batches >= 1, "cycle_batches", "must be at least 1")
        if self.sampling == "stride":
            _check(
                self.fps is not None and self.fps > 0,
                "fps",
                "stride sampling needs a target frame rate > 0",
            )
            _check(
                self.stride is not None and self.stride >= 1,
                "stride",
                "stride sampling needs a stride of at least 1 frame",
            )
            for fidelity in self.train:
                ratio = self.full.snippets / fidelity.snippets
                _check(
                    ratio == int(ratio) and ratio >= 1,
                    "train",
                    f"{fidelity.name}: in stride sampling the full fidelity's snippets "
                    f"({self.full.snippets}) must be a multiple of {fidelity.snippets}",
                )
        else:
            _check(
                self.fps is None and self.stride is None,
                "sampling",
                "fps and stride belong to stride sampling",
            )

    @property
    def fidelities(self) -> tuple[Fidelity, ...]:
        """Every fidelity to materialize, full first."""
        return (self.full, *self.train)

    def fidelity(self, name: str) -> Fidelity:
        for fidelity in self.fidelities:
            if fidelity.name == name:
                return fidelity
        raise ConfigError(
            f"schedule {self.name}: no fidelity {name!r} "
            f"(has: {', '.join(f.name for f in self.fidelities)})"
        )

    def lineage(
        self,
        fidelity: str,
        encoding: str,
        preprocess: Mapping[str, Any] | None = None,
        codec: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What the snippets of `fidelity`, stored in `encoding` (with the lossy encodings'
        `codec` settings) and resized as the spatial part of the preprocessing says
        (`Preprocess.spatial_content`), depend on besides the source videos, plus the whole
        schedule (`schedule_spec`) it was made for; kept in each shard's stats.
        `snippet_content` is the part that must match for a shard to be reused."""
        return {
            **({"codec": dict(codec)} if codec else {}),
            "schedule": self.name,
            "sampling": self.sampling,
            "fps": self.fps,
            "stride": self.stride,
            "encoding": encoding,
            **self.fidelity(fidelity).content,
            "preprocess": dict(preprocess) if preprocess is not None else None,
            "schedule_spec": self.record(),
        }

    def record(self) -> dict[str, Any]:
        """Every field, fidelities included, as plain JSON values (`schedule_from_record`
        rebuilds the schedule from it)."""
        return json.loads(json.dumps(config_to_dict(self)))

    def training_fidelities(self, mode: str) -> tuple[Fidelity, ...]:
        """What a training mode takes: LoFi the reduced fidelities, LoSA and the head the
        full one."""
        return self.train if mode == "lofi" else (self.full,)

    def validation_fidelity(self, mode: str) -> Fidelity:
        """The fidelity a mode validates at: of those it trains on, the one with the most
        snippets (then pixels)."""
        return max(self.training_fidelities(mode), key=lambda f: (f.snippets, f.size))

    def snippet_stride(self, fidelity: Fidelity) -> int:
        """Stride sampling: frames (at `fps`) between the starts of consecutive snippets."""
        assert self.stride is not None
        return self.stride * self.full.snippets // fidelity.snippets

    def batch_size_for(self, fidelity: Fidelity) -> int:
        """The batch size of steps at `fidelity`.

        A fidelity's own batch size (as `lofipipe plan` writes them) comes first. Otherwise
        LoFi keeps the batch constant; multigrid (Wu et al., CVPR 2020) scales it by
        T0*S0^2 / (T*S^2), with T the frames per video or window and S the size, relative
        to the full fidelity.
        """
        if fidelity.batch_size:
            return fidelity.batch_size
        if self.cycle != "multigrid":
            return self.batch_size
        base = self.full.snippets * self.full.frames * self.full.size**2
        this = fidelity.snippets * fidelity.frames * fidelity.size**2
        return max(1, round(self.batch_size * base / this))

    def step(self, epoch: int, batch: int) -> tuple[Fidelity, int]:
        """The fidelity and batch size of batch `batch` (0-based) of epoch `epoch`.

        Long cycle and multigrid switch fidelity every epoch, the short cycle every
        `cycle_batches` batches.
        """
        position = batch // self.cycle_batches if self.cycle == "short" else epoch
        fidelity = self.train[position % len(self.train)]
        return fidelity, self.batch_size_for(fidelity)


def _lofi_reductions(full: Fidelity) -> tuple[Fidelity, ...]:
    """The LoFi paper's three reductions of `full` (Xu et al., NeurIPS 2021, Sec. 4):
    spatial (L @ S/2), temporal (L/4 @ S) and spatio-temporal (L/2 @ S/sqrt(2)), each
    keeping the pixels per video constant."""
    return (
        Fidelity("s-lofi", full.snippets, full.frames, full.size // 2),
        Fidelity("t-lofi", full.snippets // 4, full.frames, full.size),
        Fidelity("st-lofi", full.snippets // 2, full.frames, round(full.size / math.sqrt(2))),
    )


_ANET_FULL = Fidelity("full", 100, 8, 224)
_THUMOS_FULL = Fidelity("full", 256, 8, 224)
_DEMO_FULL = Fidelity("full", 32, 8, 64)

PRESETS: dict[str, Schedule] = {
    # ActivityNet-1.3 in the LoFi paper: L=100 snippets of 8 frames at 224 (TSM-R18);
    # S-LoFi 100@112, T-LoFi 25@224, ST-LoFi 50@158; long cycle, batch 16.
    "lofi-anet": Schedule("lofi-anet", _ANET_FULL, _lofi_reductions(_ANET_FULL)),
    "lofi-anet-short": Schedule(
        "lofi-anet-short", _ANET_FULL, _lofi_reductions(_ANET_FULL), cycle="short"
    ),
    # THUMOS-14: 30 fps frames, a snippet every 4 frames (ActionFormer's feature stride),
    # windows of 256 snippets; the same three reductions over the same window.
    "lofi-thumos": Schedule(
        "lofi-thumos",
        _THUMOS_FULL,
        _lofi_reductions(_THUMOS_FULL),
        sampling="stride",
        fps=30.0,
        stride=4,
    ),
    # Multigrid's long cycle: coarse-to-fine shapes up to the base shape, batch scaled.
    "multigrid": Schedule(
        "multigrid",
        _ANET_FULL,
        (
            Fidelity("mg-1", 25, 8, 158),
            Fidelity("mg-2", 50, 8, 158),
            Fidelity("mg-3", 50, 8, 224),
            Fidelity("mg-4", 100, 8, 224),
        ),
        cycle="multigrid",
    ),
    # Small sizes for the synthetic dataset: 32 snippets of 8 frames at 64 pixels, and a
    # batch that gives its 18 training videos a few steps per epoch.
    "demo": Schedule("demo", _DEMO_FULL, _lofi_reductions(_DEMO_FULL), batch_size=4),
}


def snippet_content(lineage: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a shard's lineage its snippets depend on: all but the whole schedule it
    was made for (other fidelities and batch sizes change no pixel), through JSON as the
    markers are kept."""
    return json.loads(json.dumps({k: v for k, v in lineage.items() if k != "schedule_spec"}))


def schedule_from_record(record: Mapping[str, Any], where: str = "schedule") -> Schedule:
    """A schedule from `Schedule.record()` (as lineages and training jobs carry it)."""
    return build(Schedule, record, prefix=f"{where}: ")


def schedule_from_lineage(lineage: Mapping[str, Any], where: str = "lineage") -> Schedule:
    """The schedule a shard's or feature set's lineage was made with: its `schedule_spec`
    (every field), or, in lineages written before it was kept, its preset's name.

    Raises:
        ConfigError: an old lineage names a schedule that is no preset (a .yaml file).
    """
    spec = lineage.get("schedule_spec")
    if isinstance(spec, Mapping):
        return schedule_from_record(spec, f"{where}: schedule_spec")
    name = str(lineage.get("schedule"))
    if name not in PRESETS:
        raise ConfigError(
            f"{where}: records only the schedule's name {name!r}, which is no preset: "
            f"extract these features again with this lofipipe to keep the whole schedule"
        )
    return PRESETS[name]


def load_schedule(name_or_path: str, read_text: Callable[[str], str] | None = None) -> Schedule:
    """A preset by name, or a schedule from a YAML file (same fields as `Schedule`)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if not name_or_path.endswith((".yaml", ".yml")):
        raise ConfigError(
            f"unknown schedule {name_or_path!r}: use a preset "
            f"({', '.join(PRESETS)}) or a .yaml file"
        )
    values = read_yaml_mapping(name_or_path, read_text)
    values.setdefault("name", name_or_path.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return build(Schedule, values, prefix=f"{name_or_path}: ")
