"""Features of one fingerprint as training samples: one video's [T, C] matrix read from
its Parquet row group on demand, its ground truth in snippet units, windows of long
videos, and padded batches for the TAL head."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from lofipipe.data.annotations import AnnotationIndex
from lofipipe.errors import InputError
from lofipipe.layout import (
    FEATURES_DIR,
    STATS_PATTERN,
    feature_dir,
    feature_part_path,
    lineage_path,
)
from lofipipe.models.tal_head import assign_targets
from lofipipe.schemas.schedule import Schedule, schedule_from_lineage
from lofipipe.schemas.tables import FEATURES
from lofipipe.storage import Store

_CACHE_BYTES = 1 << 30  # decoded features a worker keeps between epochs


@dataclass
class VideoFeatures:
    """One video's (or window's) features and ground truth."""

    video_id: str
    values: np.ndarray  # [T, C] float32
    start: np.ndarray  # [T] snippet start, seconds
    end: np.ndarray  # [T]
    segments: np.ndarray  # [N, 2] seconds
    labels: np.ndarray  # [N] label ids
    first: int = 0  # index of values[0] among the video's snippets

    @property
    def grid(self) -> tuple[float, float]:
        """(time of snippet 0's center, seconds between snippet centers) of the video."""
        centers = (self.start + self.end) / 2
        step = (
            float(np.median(np.diff(centers)))
            if len(centers) > 1
            else float(self.end[0] - self.start[0])
        )
        return float(centers[0]) - self.first * step, step

    def to_snippets(self, seconds: np.ndarray) -> np.ndarray:
        """Times in seconds -> positions in this window's snippet units."""
        origin, step = self.grid
        return (seconds - origin) / step - self.first

    def to_seconds(self, positions: np.ndarray) -> np.ndarray:
        origin, step = self.grid
        return origin + (positions + self.first) * step

    def window(self, first: int, length: int, min_inside: float = 0.5) -> VideoFeatures:
        """Snippets [first, first + length), with the actions at least `min_inside` of
        whose length lies inside (clipped to the window)."""
        last = min(first + length, len(self.values))
        span = self.start[first], self.end[last - 1]
        keep, clipped = [], []
        for index, (begin, finish) in enumerate(self.segments):
            inside = min(finish, span[1]) - max(begin, span[0])
            if inside > 0 and inside >= min_inside * (finish - begin):
                keep.append(index)
                clipped.append((max(begin, span[0]), min(finish, span[1])))
        return VideoFeatures(
            self.video_id,
            self.values[first:last],
            self.start[first:last],
            self.end[first:last],
            np.array(clipped, np.float64).reshape(-1, 2),
            self.labels[keep],
            self.first + first,
        )


class FeatureSet:
    """The videos of one feature fingerprint under `root`, with their annotations."""

    def __init__(self, root: Store, fingerprint: str):
        self.root, self.fingerprint = root, fingerprint
        if not root.exists(lineage_path(fingerprint)):
            raise InputError(
                f"no features {fingerprint!r} under {root.url_of(FEATURES_DIR)} "
                f"(lofipipe features {root.url} lists them)"
            )
        self.lineage = json.loads(root.read_text(lineage_path(fingerprint)))
        self.index: dict[str, tuple[int, int]] = {}  # video_id -> (part, row group)
        for name in root.list(feature_dir(fingerprint), pattern=STATS_PATTERN):
            stats = json.loads(root.read_text(name))
            for row, video_id in enumerate(stats["videos"]):
                self.index[video_id] = (stats["part"], row)
        if not self.index:
            raise InputError(
                f"features {fingerprint} hold no videos yet: run lofipipe extract to the end"
            )
        self.annotations = AnnotationIndex(root)
        self.label_names = self.annotations.label_names
        self.subsets = self.annotations.subsets
        self._files: dict[int, pq.ParquetFile] = {}
        self._cache: OrderedDict[str, VideoFeatures] = OrderedDict()
        self._cached = 0

    @property
    def schedule(self) -> Schedule:
        """The schedule the features were extracted with, rebuilt from the lineage (whole,
        so a schedule .yaml file is not needed again; a preset's name in older lineages).

        Raises:
            ConfigError: an older lineage names a schedule file instead of a preset.
        """
        return schedule_from_lineage(self.lineage, self.root.url_of(lineage_path(self.fingerprint)))

    def __getstate__(self):
        return {**self.__dict__, "_files": {}, "_cache": OrderedDict(), "_cached": 0}

    def videos(self, subset: str | None = None) -> list[str]:
        """Video ids with features (and annotations of `subset`, if given), sorted."""
        return sorted(v for v in self.index if subset is None or self.subsets.get(v) == subset)

    @property
    def dim(self) -> int:
        return int(self.read(next(iter(sorted(self.index)))).values.shape[1])

    def read(self, video_id: str) -> VideoFeatures:
        """One video's features (from its row group) and ground truth."""
        if video_id in self._cache:
            self._cache.move_to_end(video_id)
            return self._cache[video_id]
        part, row = self.index[video_id]
        if part not in self._files:
            self._files[part] = pq.ParquetFile(
                self.root.open_arrow(feature_part_path(self.fingerprint, part))
            )
        table = FEATURES.check(
            self._files[part].read_row_group(row),
            self.root.url_of(feature_part_path(self.fingerprint, part)),
        )
        record = table.to_pylist()[0]
        video = VideoFeatures(
            video_id,
            np.asarray(record["values"], np.float32).reshape(record["num_snippets"], record["dim"]),
            np.asarray(record["snippet_start"]),
            np.asarray(record["snippet_end"]),
            *self.annotations.segments(video_id),
        )
        self._cache[video_id] = video
        self._cached += video.values.nbytes
        while self._cached > _CACHE_BYTES and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= dropped.values.nbytes
        return video


def training_crop(
    video: VideoFeatures,
    window: int,
    crop: tuple[float, float],
    rng: np.random.Generator,
    tries: int = 100,
) -> VideoFeatures:
    """A random part of a training video, as ActionFormer crops its inputs.

    A video longer than `window` snippets (stride sampling) gives a window of that length;
    one that fits (or any video when `window` is 0) gives a random `crop` fraction of its
    length. The part is drawn again (up to `tries` times) until it holds at least half of
    one action, so that a step does not spend a video on background alone.
    """
    count = len(video.values)
    if window and count > window:
        length = window
    else:
        low = max(1, round(crop[0] * count))
        length = int(rng.integers(low, max(low, round(crop[1] * count)) + 1))
        if length >= count:
            return video
    part = video
    for _ in range(tries if len(video.labels) else 1):  # without actions, any part will do
        part = video.window(int(rng.integers(0, count - length + 1)), length)
        if len(part.labels):
            break
    return part


def inference_windows(video: VideoFeatures, length: int) -> list[VideoFeatures]:
    """Windows covering the video, overlapping by half, the last one ending at its end."""
    count = len(video.values)
    if count <= length:
        return [video]
    starts = list(range(0, count - length, length // 2)) + [count - length]
    return [video.window(first, length, min_inside=0.0) for first in starts]


@dataclass
class Batch:
    features: torch.Tensor  # [B, C, T] padded
    mask: torch.Tensor  # [B, T] bool
    classes: torch.Tensor  # [B, P, K] over all pyramid points
    distances: torch.Tensor  # [B, P, 2]


def collate(videos: Sequence[VideoFeatures], num_classes: int, levels: int) -> Batch:
    """Pads to a common length (a multiple of the coarsest stride) and assigns targets."""
    multiple = 2 ** (levels - 1)
    longest = max(len(v.values) for v in videos)
    length = max(multiple, -(-longest // multiple) * multiple)
    lengths, size = [], length
    for _ in range(levels):
        lengths.append(size)
        size = -(-size // 2)
    strides = [2**i for i in range(levels)]
    first = torch.as_tensor(videos[0].values)  # an encoder's output stays on its device
    features = torch.zeros(len(videos), first.shape[1], length, device=first.device)
    mask = torch.zeros(len(videos), length, dtype=torch.bool, device=first.device)
    classes, distances = [], []
    for index, video in enumerate(videos):
        # Values may be an encoder's output (lofi mode): the copy keeps their gradient.
        features[index, :, : len(video.values)] = torch.as_tensor(video.values).T
        mask[index, : len(video.values)] = True
        target_classes, target_distances = assign_targets(
            torch.from_numpy(video.to_snippets(video.segments)),
            torch.from_numpy(video.labels),
            lengths,
            strides,
            num_classes,
        )
        classes.append(target_classes)
        distances.append(target_distances)
    return Batch(features, mask, torch.stack(classes), torch.stack(distances))
