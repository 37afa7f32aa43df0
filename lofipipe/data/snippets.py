"""Reading shards back: per video (or per window) a uint8 tensor [L, F, 3, S, S], the
snippet times and the video's annotated segments. One reader serves training, extraction
and inspection, as a plain iterator or as a Ray Dataset."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lofipipe.data.annotations import AnnotationIndex
from lofipipe.data.prefetch import prefetched
from lofipipe.errors import ConfigError, InputError
from lofipipe.layout import SHARDS_DIR, STATS_PATTERN, parquet_of, shard_dir, stats_of
from lofipipe.media.frame_codec import ENCODINGS, decode_frames
from lofipipe.schemas.preprocess import Preprocess, presets_with
from lofipipe.schemas.schedule import Schedule, snippet_content
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

    def windows(self, length: int, stride: int | None = None) -> Iterator[VideoSnippets]:
        """Windows of `length` consecutive snippets, a new one every `stride` (default:
        `length`); the last may be shorter."""
        stride, count = stride or length, len(self.start)
        for first in range(0, max(count - length, 0) + stride, stride):
            if first < count:
                yield self.window(first, length)

    def window(self, first: int, length: int) -> VideoSnippets:
        """Snippets [first, first + length) (fewer at the end of the video)."""
        last = first + length
        return replace(
            self,
            frames=self.frames[first:last],
            start=self.start[first:last],
            end=self.end[first:last],
            center=self.center[first:last],
            frame_times=self.frame_times[first:last],
            first_index=self.first_index + first,
        )

    def as_row(self) -> dict:
        """A Ray Data row: numpy arrays only."""
        return {
            "video_id": self.video_id,
            "fidelity": self.fidelity,
            "frames": self.frames.numpy(),
            "start": self.start,
            "end": self.end,
            "center": self.center,
            "frame_times": self.frame_times,
            "segments": self.segments,
            "labels": self.labels,
            "first_index": self.first_index,
        }


_READ_ROWS = 256  # snippets per Parquet read batch


class SnippetReader:
    """Reads the committed shards of one fidelity under `root`."""

    def __init__(self, root: Store, fidelity: str, threads: int | None = None, device: str = "cpu"):
        """`threads`: how many threads decode a video's snippets (default: `read_threads`);
        `device`: where h264 snippets are decoded, cpu or cuda[:N] (a GPU's video
        decoder, see `h264_decoder`)."""
        self.root, self.fidelity, self.threads, self.device = root, fidelity, threads, device
        self._index: AnnotationIndex | None = None
        self._shard_of: dict[str, str] | None = None

    @property
    def annotations(self) -> AnnotationIndex:
        if self._index is None:
            self._index = AnnotationIndex(self.root)
        return self._index

    def shards(self) -> list[str]:
        """Paths of the committed shards (those with their stats marker), in order."""
        names = self.root.list(shard_dir(self.fidelity), pattern=STATS_PATTERN)
        if not names:
            raise InputError(
                f"no committed shards for fidelity {self.fidelity!r} under "
                f"{self.root.url_of(SHARDS_DIR)}: run lofipipe materialize first"
            )
        return [parquet_of(name) for name in names]

    def videos(self, video_ids: set[str] | None = None) -> Iterator[VideoSnippets]:
        """Every video's snippets, shard by shard, optionally only `video_ids`."""
        for shard in self.shards():
            yield from self.read_shard(shard, video_ids)

    def stream(
        self, video_ids: set[str] | None = None, prefetch: int = 2
    ) -> Iterator[VideoSnippets]:
        """`videos`, read and decoded `prefetch` videos ahead on a background thread while
        the caller works; at most `prefetch + 1` videos are held at a time."""
        return prefetched(self.videos(video_ids), prefetch)

    def windows(
        self, length: int, stride: int | None = None, video_ids: set[str] | None = None
    ) -> Iterator[VideoSnippets]:
        """Windows of `length` consecutive snippets, a new one every `stride` (default:
        `length`); the last window of a video may be shorter."""
        for video in self.videos(video_ids):
            yield from video.windows(length, stride)

    def read_video(self, video_id: str) -> VideoSnippets:
        """One video's snippets, reading only the row groups that hold them."""
        if self._shard_of is None:
            self._shard_of = {
                video: shard for shard, stats in self.committed() for video in stats["videos"]
            }
        if video_id not in self._shard_of:
            raise InputError(f"no snippets of video {video_id!r} at fidelity {self.fidelity!r}")
        with self.root.open_arrow(self._shard_of[video_id]) as handle:
            table = pq.read_table(handle, filters=[("video_id", "=", video_id)])
        return self._video(table)

    def read_shard(self, shard: str, video_ids: set[str] | None = None) -> Iterator[VideoSnippets]:
        """The videos of one shard, in order, one at a time."""
        pending: list[pa.RecordBatch] = []
        with self.root.open_arrow(shard) as handle:
            # pre_buffer: each row group's column chunks in one coalesced read
            for batch in pq.ParquetFile(handle, pre_buffer=True).iter_batches(
                batch_size=_READ_ROWS
            ):
                ids = batch.column("video_id").to_numpy(zero_copy_only=False)
                cuts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1), len(ids)]
                for first, last in zip(cuts, cuts[1:], strict=False):
                    part = batch.slice(first, last - first)
                    if pending and pending[0].column("video_id")[0] != part.column("video_id")[0]:
                        yield from self._finish(pending, video_ids)
                        pending = []
                    pending.append(part)
        if pending:
            yield from self._finish(pending, video_ids)

    def _finish(self, parts: list[pa.RecordBatch], video_ids) -> Iterator[VideoSnippets]:
        table = pa.Table.from_batches(parts)
        video_id = table.column("video_id")[0].as_py()
        if video_ids is None or video_id in video_ids:
            yield self._video(table)

    def dataset(self, video_ids: set[str] | None = None, window: int | None = None):
        """The same videos (or windows of `window` snippets) as a Ray Dataset, one row each
        (`VideoSnippets.as_row`), shards read in parallel."""
        import ray

        shards = [{"shard": shard} for shard in self.shards()]
        return ray.data.from_items(shards, override_num_blocks=len(shards)).flat_map(
            functools.partial(_shard_rows, self, video_ids, window)
        )

    def label_names(self) -> list[str]:
        """Label names by label id."""
        return self.annotations.label_names

    def _video(self, table: pa.Table) -> VideoSnippets:
        index = table.column("index").to_numpy()
        if np.any(np.diff(index) < 0):  # shards are written in order; this is a safeguard
            table = table.take(np.argsort(index, kind="stable"))
        video_id = table.column("video_id")[0].as_py()
        count, frames_per = table.num_rows, table.column("num_frames")[0].as_py()
        size, encoding = table.column("height")[0].as_py(), table.column("encoding")[0].as_py()
        if encoding not in ENCODINGS:
            raise InputError(f"video {video_id}: unknown frame encoding {encoding!r}")
        frames = np.empty((count * frames_per, 3, size, size), np.uint8)
        filled = 0
        for chunk in table.column("frames").chunks:
            chunk_frames = len(chunk.flatten())
            decode_frames(
                encoding, chunk, frames[filled : filled + chunk_frames], self.threads, self.device
            )
            filled += chunk_frames
        frames = frames.reshape(count, frames_per, 3, size, size)

        def column(name):
            return table.column(name).to_numpy()

        segments, label_ids = self.annotations.segments(video_id)
        return VideoSnippets(
            video_id=video_id,
            fidelity=table.column("fidelity")[0].as_py(),
            frames=torch.from_numpy(frames),
            start=column("start"),
            end=column("end"),
            center=column("center"),
            frame_times=table.column("frame_times")
            .combine_chunks()
            .flatten()
            .to_numpy()
            .reshape(count, frames_per),
            segments=segments,
            labels=label_ids,
        )

    def committed(self) -> list[tuple[str, dict]]:
        """(path, stats marker) of each committed shard, in order."""
        return [
            (shard, json.loads(self.root.read_text(stats_of(shard)))) for shard in self.shards()
        ]

    def stats(self) -> list[dict]:
        """The stats markers of the committed shards."""
        return [stats for _, stats in self.committed()]

    def check_schedule(self, schedule: Schedule, preprocess: Preprocess) -> list[tuple[str, dict]]:
        """`committed()`, once every shard is known to hold this fidelity of `schedule`
        (in any frame encoding), resized and cropped as `preprocess` says.

        Raises:
            ConfigError: a shard was materialized for another schedule, or with another
                spatial preprocessing (the message names the setting that reads it).
        """
        expected = snippet_content(schedule.lineage(self.fidelity, "", preprocess.spatial_content))
        records = self.committed()
        for shard, record in records:
            lineage = {**snippet_content(record["lineage"]), "encoding": ""}
            lineage.pop("codec", None)
            if lineage == expected:
                continue
            where = self.root.url_of(shard)
            if {**lineage, "preprocess": None} != {**expected, "preprocess": None}:
                raise ConfigError(
                    f"{where} holds snippets of schedule "
                    f"{lineage['schedule']!r}, not of {schedule.name!r}: pass --schedule "
                    f"{lineage['schedule']}, or materialize {schedule.name} first"
                )
            raise ConfigError(_preprocess_mismatch(where, lineage.get("preprocess"), preprocess))
        return records


def _preprocess_mismatch(where: str, stored: dict | None, wanted: Preprocess) -> str:
    redo = f"lofipipe materialize with --set materialize.preprocess={wanted.name}"
    if stored is None:
        return (
            f"{where} holds snippets made before preprocessing presets (squashed with "
            f"FFmpeg's FAST_BILINEAR), not preprocessed as {wanted.name}: run {redo}"
        )
    names = presets_with(stored)
    described = ", ".join(f"{k} {v}" for k, v in stored.items())
    wanted_described = ", ".join(f"{k} {v}" for k, v in wanted.spatial_content.items())
    use = (
        f"pass --set materialize.preprocess={names[0]} to use them"
        if names
        else "no preset makes them"
    )
    return (
        f"{where} holds snippets preprocessed as {' or '.join(names) or 'unknown'} "
        f"({described}), not as {wanted.name} ({wanted_described}): "
        f"{use}, or run {redo}"
    )


def _shard_rows(reader: SnippetReader, video_ids, window: int | None, item: dict) -> Iterator[dict]:
    """A shard's rows, one video (or window) at a time: Ray Data takes them as they come,
    so a task holds one video's frames, not its whole shard's."""
    videos = reader.read_shard(item["shard"], video_ids)
    if window:
        videos = (part for video in videos for part in video.windows(window))
    for video in videos:
        yield video.as_row()
