"""Shard stage: decode a group of videos once and write one shard per fidelity.

    ROOT/shards/<fidelity>/part-NNNNN.parquet     snippets (SNIPPETS schema)
    ROOT/shards/<fidelity>/part-NNNNN.stats.json  rows, videos, bytes, failures, lineage

The stats file is the commit marker: it is written after its Parquet file is committed, so
a shard without stats is not done, whatever else lies there. A video's snippets are spooled
to local disk while it decodes and join the shard only when the whole video succeeded, so a
failed video leaves no rows and its neighbours' rows are exactly those of a clean run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lofipipe import __version__
from lofipipe.data.manifest import SourceVideo
from lofipipe.errors import VideoFailure, failure_reason
from lofipipe.layout import shard_path, shard_stats_path
from lofipipe.media.decode import Snippet, SnippetDecoder
from lofipipe.media.frame_codec import YUV_ENCODINGS, Color, FrameCodec
from lofipipe.schemas.preprocess import PREPROCESS_PRESETS, Preprocess
from lofipipe.schemas.schedule import Schedule
from lofipipe.schemas.tables import SNIPPETS
from lofipipe.storage import Store
from lofipipe.workers.quarantine import ShardJournal
from lofipipe.workers.runtime import node_id

# A record batch (and so a Parquet row group) closes at this many snippets or bytes.
_BATCH_ROWS = 32
_BATCH_BYTES = 8 * 2**20
_SPILL_BYTES = 32 * 2**20  # one video's rows held in memory before they go to local disk
# Dictionaries and min/max statistics only pay off for the small columns; for the frames
# they cost a hash and a comparison of every frame's bytes.
_SMALL_COLUMNS = [name for name in SNIPPETS.column_names if name != "frames"]
_FRAMES = SNIPPETS.column_names.index("frames")


@dataclass(frozen=True)
class ShardJob:
    """The videos of one shard index and the fidelities still to write for them."""

    shard: int
    videos: tuple[SourceVideo, ...]  # sorted by id
    fidelities: tuple[str, ...]
    last_failure: str = ""  # why the previous attempt produced nothing (see quarantine.py)


class _VideoSpool:
    """One video's rows of one fidelity until the video is done: Arrow batches in memory,
    moved to an IPC file on local disk by `spill` (when the video's spools together pass
    `_SPILL_BYTES`, as long videos in stride sampling do), so memory stays bounded
    whatever the video's length."""

    def __init__(self, codec: FrameCodec):
        self.codec = codec
        self.color: Color | None = None
        self.rows: list[dict[str, Any]] = []
        self.frames: list[np.ndarray] = []  # of `rows`, as `FrameCodec.column` takes them
        self.pending = 0  # bytes of `frames`
        self.batches: list[pa.RecordBatch] = []
        self.held = 0
        self.path = ""  # the IPC file on local disk, once spilled
        self.file: pa.NativeFile | None = None
        self.writer: pa.ipc.RecordBatchStreamWriter | None = None
        self.count = 0

    def add(self, row: dict[str, Any], frames: np.ndarray, color: Color | None = None) -> None:
        self.color = self.color or color
        self.rows.append(row)
        self.frames.append(frames)
        self.count += 1
        self.pending += frames.nbytes
        if len(self.rows) >= _BATCH_ROWS or self.pending >= _BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        table = SNIPPETS.from_rows(self.rows).set_column(
            _FRAMES,
            SNIPPETS.arrow.field(_FRAMES),
            self.codec.column(self.frames, self.color),
        )
        for batch in table.to_batches():
            self.batches.append(batch)
            self.held += batch.nbytes
        self.rows, self.frames, self.pending = [], [], 0

    def spill(self) -> None:
        if self.writer is None:
            # Native files: Arrow writes and reads them without Python byte strings.
            handle, self.path = tempfile.mkstemp(suffix=".arrows")
            os.close(handle)
            self.file = pa.OSFile(self.path, "wb")
            self.writer = pa.ipc.new_stream(self.file, SNIPPETS.arrow)
        for batch in self.batches:
            self.writer.write_batch(batch)
        self.batches, self.held = [], 0

    def copy_to(self, parquet: pq.ParquetWriter) -> None:
        self._flush()
        if self.writer is not None and self.file is not None:  # spilled: both or neither
            self.writer.close()
            self.file.close()
            with pa.OSFile(self.path, "rb") as source:
                for batch in pa.ipc.open_stream(source):
                    parquet.write_batch(batch)
        for batch in self.batches:
            parquet.write_batch(batch)

    def close(self) -> None:
        self.batches = []
        if self.file is not None:
            self.file.close()
            os.remove(self.path)


@dataclass
class ShardWriter:
    """Writes the shards of one `ShardJob`: each video decoded once for all fidelities.

    Args:
        schedule: the fidelities and sampling.
        root: where `shards/` lives.
        codec: how frames are stored (media/frame_codec.py); each video and fidelity
            gets a fresh copy.
        preprocess: how frames are resized and cropped (its spatial part; the lineage
            keeps it).
    """

    schedule: Schedule
    root: Store
    codec: FrameCodec = field(default_factory=lambda: FrameCodec("h264"))
    decode_threads: int = 0
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    max_attempts: int = 2  # attempts that may die on one video before it is quarantined
    preprocess: Preprocess = PREPROCESS_PRESETS["squash"]
    name = "materialize"
    resources: ClassVar[Mapping[str, float]] = {"num_cpus": 1}

    def process(self, job: ShardJob) -> list[dict[str, Any]]:
        """Writes part-<shard> of each fidelity in `job`; returns their stats."""
        decoder = SnippetDecoder(
            self.schedule,
            self.storage_options,
            self.decode_threads or max(1, int(self.resources["num_cpus"])),
            self.preprocess,
            self.codec.encoding in YUV_ENCODINGS,
        )
        fidelities = tuple(self.schedule.fidelity(name) for name in job.fidelities)
        stats = {f.name: self._new_stats(job, f.name) for f in fidelities}
        journal = ShardJournal.resume(self.root, job.shard, job.last_failure)
        with contextlib.ExitStack() as stack:
            writers = {}
            for f in fidelities:
                handle = stack.enter_context(self.root.writer(shard_path(f.name, job.shard)))
                writers[f.name] = stack.enter_context(
                    pq.ParquetWriter(
                        handle,
                        SNIPPETS.arrow,
                        compression=self._compression(),
                        use_dictionary=_SMALL_COLUMNS,
                        write_statistics=_SMALL_COLUMNS,
                    )
                )
            for video in job.videos:
                if quarantined := journal.quarantined(video.video_id, self.max_attempts):
                    for name in stats:
                        stats[name]["failed"][video.video_id] = quarantined
                    continue
                journal.start(video.video_id)
                spools = {f.name: _VideoSpool(dataclasses.replace(self.codec)) for f in fidelities}
                try:
                    for snippet in decoder.snippets(
                        video.uri, video.start_time, video.duration, fidelities
                    ):
                        spools[snippet.fidelity].add(
                            self._row(video, snippet), snippet.frames, snippet.color
                        )
                        if sum(spool.held for spool in spools.values()) > _SPILL_BYTES:
                            for spool in spools.values():
                                spool.spill()
                            # Arrow's allocator keeps freed pages; hand them back, or the
                            # process grows with every spill of a long video.
                            pa.default_memory_pool().release_unused()
                    for name, spool in spools.items():
                        spool.copy_to(writers[name])
                        stats[name]["rows"] += spool.count
                        stats[name]["videos"].append(video.video_id)
                except VideoFailure as failure:
                    for name in stats:
                        stats[name]["failed"][video.video_id] = failure.line
                finally:
                    for spool in spools.values():
                        spool.close()
        journal.close()  # before the commit: a committed shard never keeps a journal
        for name, record in stats.items():
            failures = Counter(failure_reason(line) for line in record["failed"].values())
            record["failures"] = dict(sorted(failures.items()))
            record["bytes"] = int(self.root.info(shard_path(name, job.shard))["size"])
            self.root.write_text(shard_stats_path(name, job.shard), json.dumps(record, indent=1))
        return list(stats.values())

    def _compression(self) -> dict[str, str]:
        # Frames are left uncompressed: JPEG and H.264 bytes do not compress, and zstd
        # gained nothing on raw video pixels in bench/materialize_bench.py while halving
        # read speed.
        codecs = {name: "zstd" for name in SNIPPETS.column_names}
        codecs["frames"] = "none"
        return codecs

    def _new_stats(self, job: ShardJob, fidelity: str) -> dict[str, Any]:
        return {
            "fidelity": fidelity,
            "shard": job.shard,
            "rows": 0,
            "videos": [],
            "failed": {},
            "source_fingerprints": {v.video_id: v.fingerprint for v in job.videos},
            "lineage": self.schedule.lineage(
                fidelity, self.codec.encoding, self.preprocess.spatial_content, self.codec.settings
            ),
            "lofipipe_version": __version__,
            "node": node_id(),
        }

    def _row(self, video: SourceVideo, snippet: Snippet) -> dict[str, Any]:
        fidelity = self.schedule.fidelity(snippet.fidelity)
        return {
            "video_id": video.video_id,
            "fidelity": snippet.fidelity,
            "index": snippet.index,
            "start": snippet.start,
            "end": snippet.end,
            "center": snippet.center,
            "frame_times": snippet.frame_times,
            "num_frames": fidelity.frames,
            "height": fidelity.size,
            "width": fidelity.size,
            "encoding": self.codec.encoding,
            "source_fingerprint": video.fingerprint,
        }
