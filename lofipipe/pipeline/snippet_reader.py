"""Reading shards back: per video (or per window) a uint8 tensor [L, F, 3, S, S], the
snippet times and the video's annotated segments. One reader serves training, extraction
and inspection, as a plain iterator or as a Ray Dataset."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow.parquet as pq
import torch

from lofipipe.errors import InputError
from lofipipe.pipeline.frame_codec import decode_frame
from lofipipe.pipeline.ingest import ANNOTATIONS_PATH
from lofipipe.pipeline.shards import stats_path
from lofipipe.schemas.tables import ANNOTATIONS
from lofipipe.storage import Store


@dataclass
class VideoSnippets:
    """The snippets of one video (or one window of it) at one fidelity."""

    video_id: str
    fidelity: str
    frames: torch.Tensor  # uint8 [L, F, 3, S, S]
    start: np.ndarray  # [L] seconds from the video's start
    end: np.ndarray  # [L]
    center: np.ndarray  # [L]
    frame_times: np.ndarray  # [L, F] presentation time of each frame
    segments: np.ndarray  # [N, 2] annotated action spans, seconds
    labels: np.ndarray  # [N] label ids (index into the sorted label names)
    first_index: int = 0  # snippet index of frames[0] in the whole video

    def window(self, first: int, length: int) -> VideoSnippets:
        """Snippets [first, first + length) (fewer at the end of the video)."""
        last = first + length
        return replace(self, frames=self.frames[first:last], start=self.start[first:last],
                       end=self.end[first:last], center=self.center[first:last],
                       frame_times=self.frame_times[first:last],
                       first_index=self.first_index + first)

    def as_row(self) -> dict:
        """A Ray Data row: numpy arrays only."""
        return {"video_id": self.video_id, "fidelity": self.fidelity,
                "frames": self.frames.numpy(), "start": self.start, "end": self.end,
                "center": self.center, "frame_times": self.frame_times,
                "segments": self.segments, "labels": self.labels,
                "first_index": self.first_index}


class SnippetReader:
    """Reads the committed shards of one fidelity under `root`."""

    def __init__(self, root: Store, fidelity: str):
        self.root, self.fidelity = root, fidelity
        self._labels: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def shards(self) -> list[str]:
        """Paths of the committed shards (those with their stats marker), in order."""
        names = self.root.list(f"shards/{self.fidelity}", pattern="part-*.stats.json")
        if not names:
            raise InputError(f"no committed shards for fidelity {self.fidelity!r} under "
                             f"{self.root.url_of('shards')}: run lofipipe materialize first")
        return [name.replace(".stats.json", ".parquet") for name in names]

    def videos(self, video_ids: set[str] | None = None) -> Iterator[VideoSnippets]:
        """Every video's snippets, shard by shard, optionally only `video_ids`."""
        for shard in self.shards():
            yield from self.read_shard(shard, video_ids)

    def windows(self, length: int, stride: int | None = None,
                video_ids: set[str] | None = None) -> Iterator[VideoSnippets]:
        """Windows of `length` consecutive snippets, a new one every `stride` (default:
        `length`); the last window of a video may be shorter."""
        stride = stride or length
        for video in self.videos(video_ids):
            count = len(video.start)
            for first in range(0, max(count - length, 0) + stride, stride):
                if first < count:
                    yield video.window(first, length)

    def read_shard(self, shard: str, video_ids: set[str] | None = None
                   ) -> Iterator[VideoSnippets]:
        """The videos of one shard, in order, one at a time."""
        labels = self._annotations()
        rows: list[dict] = []
        with self.root.open(shard) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=64):
                for row in batch.to_pylist():
                    if video_ids is not None and row["video_id"] not in video_ids:
                        continue
                    if rows and rows[-1]["video_id"] != row["video_id"]:
                        yield self._video(rows, labels)
                        rows = []
                    rows.append(row)
        if rows:
            yield self._video(rows, labels)

    def dataset(self, video_ids: set[str] | None = None):
        """The same videos as a Ray Dataset, one row per video, read in parallel."""
        import ray

        shards = [{"shard": shard} for shard in self.shards()]
        return ray.data.from_items(shards, override_num_blocks=len(shards)).flat_map(
            functools.partial(_shard_rows, self, video_ids))

    def _annotation_rows(self) -> list[dict]:
        if not self.root.exists(ANNOTATIONS_PATH):
            return []
        return ANNOTATIONS.check(self.root.read_table(ANNOTATIONS_PATH),
                                 self.root.url_of(ANNOTATIONS_PATH)).to_pylist()

    def label_names(self) -> list[str]:
        """Label names by label id."""
        names = {row["label_id"]: row["label"] for row in self._annotation_rows()}
        return [names.get(i, str(i)) for i in range(max(names, default=-1) + 1)]

    def _annotations(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self._labels is None:
            self._labels = {}
            grouped: dict[str, list] = {}
            for row in self._annotation_rows():
                grouped.setdefault(row["video_id"], []).append(row)
            if grouped:
                self._labels = {
                    video_id: (np.array([[r["start"], r["end"]] for r in rs], np.float64),
                               np.array([r["label_id"] for r in rs], np.int64))
                    for video_id, rs in grouped.items()}
        return self._labels

    def _video(self, rows: list[dict], labels) -> VideoSnippets:
        rows.sort(key=lambda row: row["index"])
        first = rows[0]
        size, encoding = first["height"], first["encoding"]
        frames = np.empty((len(rows), first["num_frames"], size, size, 3), np.uint8)
        for i, row in enumerate(rows):
            for j, data in enumerate(row["frames"]):
                frames[i, j] = decode_frame(data, encoding, size)
        segments, label_ids = labels.get(first["video_id"],
                                         (np.zeros((0, 2)), np.zeros(0, np.int64)))
        return VideoSnippets(
            video_id=first["video_id"], fidelity=first["fidelity"],
            frames=torch.from_numpy(frames).permute(0, 1, 4, 2, 3).contiguous(),
            start=np.array([r["start"] for r in rows]), end=np.array([r["end"] for r in rows]),
            center=np.array([r["center"] for r in rows]),
            frame_times=np.array([r["frame_times"] for r in rows]),
            segments=segments, labels=label_ids)

    def stats(self) -> list[dict]:
        """The stats markers of the committed shards."""
        return [json.loads(self.root.read_text(
            stats_path(self.fidelity, int(shard.rsplit("-", 1)[1][:5]))))
            for shard in self.shards()]


def _shard_rows(reader: SnippetReader, video_ids, item: dict) -> list[dict]:
    return [video.as_row() for video in reader.read_shard(item["shard"], video_ids)]
