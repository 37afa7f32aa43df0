"""Feature extraction stage: an encoder over the full-fidelity snippets of each video, read
from the snippet shards or decoded straight from the source videos.

    ROOT/features/<fingerprint>/lineage.json           what the features depend on
    ROOT/features/<fingerprint>/part-NNNNN.parquet     a row (and row group) per video
    ROOT/features/<fingerprint>/part-NNNNN.stats.json  commit marker, written last
    <export>/<video_id>.npy + <video_id>.json          (T, C) float32 for ActionFormer/OpenTAD

Part N holds the videos of snippet shard N (the same `videos_per_shard` groups in video_id
order, whichever the source), so a rerun skips parts whose marker matches the source
fingerprints of those videos, and a new checkpoint (a new fingerprint) writes beside the old
features without touching them. `write_feature_part` and `remove_feature_parts` are how
any feature set's parts are written and retired (`features import` writes them too).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lofipipe import __version__
from lofipipe.data.manifest import SourceVideo
from lofipipe.data.snippets import SnippetReader
from lofipipe.errors import VideoFailure
from lofipipe.layout import (
    STATS_PATTERN,
    feature_dir,
    feature_part_path,
    feature_stats_path,
    part_number,
    stats_of,
)
from lofipipe.media.decode import SnippetDecoder
from lofipipe.models.device import to_device
from lofipipe.models.precision import autocast, check_precision
from lofipipe.schemas.preprocess import PREPROCESS_PRESETS, Preprocess
from lofipipe.schemas.schedule import Schedule
from lofipipe.schemas.tables import FEATURES
from lofipipe.storage import Store
from lofipipe.workers.runtime import assigned_device, node_id


@dataclass(frozen=True)
class PartJob:
    """One feature part: the videos of snippet shard `part`, read from its committed
    `shard`, or (when `shard` is empty) decoded straight from their source files."""

    part: int
    videos: tuple[SourceVideo, ...] = ()
    shard: str = ""


@dataclass
class EncodedVideo:
    """One video's features and the times of its snippets."""

    video_id: str
    values: np.ndarray  # (L, C) float32
    start: np.ndarray  # (L,) seconds
    end: np.ndarray
    clip_frames: int

    @property
    def center(self) -> np.ndarray:
        return (self.start + self.end) / 2

    def row(self, fingerprint: str, source_fingerprint: str | None) -> dict[str, Any]:
        """Its row of a feature part (`FEATURES`)."""
        return {
            "video_id": self.video_id,
            "encoder_fingerprint": fingerprint,
            "num_snippets": len(self.values),
            "dim": self.values.shape[1],
            "values": self.values.ravel(),
            "snippet_start": self.start,
            "snippet_end": self.end,
            "source_fingerprint": source_fingerprint,
        }


def write_feature_part(
    root: Store,
    fingerprint: str,
    part: int,
    rows: list[dict[str, Any]],
    source: str,
    sources: Mapping[str, str],
    failed: Mapping[str, str],
) -> dict[str, Any]:
    """Writes feature part `part` (a row group per video), then its commit marker, last;
    returns the marker's record.

    Args:
        source: what the part was made from (a shard, "videos", "imported").
        sources: video_id -> fingerprint of what its row was made from; a rerun skips
            the part when they are unchanged.
        failed: video_id -> failure line of the part's videos that have no row.
    """
    # One row group per video: a trainer reads one video's features without the rest.
    root.write_table(
        feature_part_path(fingerprint, part), FEATURES.from_rows(rows), row_group_size=1
    )
    record = {
        "part": part,
        "source": source,
        "videos": [r["video_id"] for r in rows],
        "rows": len(rows),
        "snippets": sum(r["num_snippets"] for r in rows),
        "failed": dict(failed),
        "source_fingerprints": dict(sources),
        "lofipipe_version": __version__,
        "node": node_id(),
    }
    root.write_text(feature_stats_path(fingerprint, part), json.dumps(record, indent=1))
    return record


def remove_feature_parts(root: Store, fingerprint: str, first: int) -> int:
    """Removes the parts numbered `first` and up (the set shrank), each marker first, then
    its data; returns how many there were."""
    stale = [
        name
        for name in root.list(feature_dir(fingerprint), pattern=STATS_PATTERN)
        if part_number(name) >= first
    ]
    for name in stale:
        root.remove(name)
        root.remove(feature_part_path(fingerprint, part_number(name)))
    return len(stale)


@dataclass
class FeatureExtractor:
    """Encodes the videos of one part and writes their feature part.

    Args:
        root: where `shards/` and `features/` live.
        schedule: the snippets' schedule; its full fidelity is what the encoder takes.
        encoder: a callable building the (weighted) encoder, run in the worker.
        fingerprint: the encoder fingerprint naming the output folder.
        batch_size: snippets per forward pass (a LoSA encoder takes a video at once).
        export: folder URL for per-video .npy files, or None.
        decode_threads: per video, when decoding source videos (0: FFmpeg's choice).
        preprocess: when decoding source videos, how frames are resized and cropped (as
            materialize does for shards).
        precision: the encoder's arithmetic (fp32, bf16, fp16), resolved on the driver.
        device: where the encoder runs; `ExtractActor` sets what Ray assigned it.
        shard_decoder: cpu, or gpu: h264 shards decoded on `device`'s video decoder.
    """

    root: Store
    schedule: Schedule
    encoder: Any
    fingerprint: str
    batch_size: int = 32
    export: str | None = None
    decode_threads: int = 0
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    preprocess: Preprocess = PREPROCESS_PRESETS["squash"]
    precision: str = "fp32"
    device: str = "cpu"
    shard_decoder: str = "cpu"

    def __post_init__(self) -> None:
        self._model: torch.nn.Module | None = None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            device = torch.device(self.device)
            check_precision(self.precision, device)
            self._model = self.encoder().eval().to(device)
        return self._model

    def _step(self) -> int | None:
        """Snippets per forward pass; None: a whole video at once (LoSA)."""
        return None if getattr(self.model, "losa", False) else self.batch_size

    def encode(self, batches: Iterable[torch.Tensor]) -> np.ndarray:
        """The (L, C) float32 features of a video's snippets, given as uint8
        [B, F, 3, S, S] batches in time order."""
        model = self.model
        device = next(model.parameters()).device
        # A LoSA encoder moves its backbone's chunks of the whole video itself.
        losa = getattr(model, "losa", False)
        outputs = []
        with torch.no_grad(), autocast(self.precision, device):
            for batch in batches:
                outputs.append(model(batch if losa else to_device(batch, device)).float())
        return torch.cat(outputs).cpu().numpy()  # one copy back, when the video is done

    def process(self, job: PartJob) -> dict[str, Any]:
        """Writes the feature part of one job; returns its stats."""
        failed: dict[str, str] = {}
        if job.shard:
            shard_stats = json.loads(self.root.read_text(stats_of(job.shard)))
            sources = shard_stats["source_fingerprints"]
            failed.update(shard_stats["failed"])  # failed to decode when materialized
            encoded = self._read(job.shard)
        else:
            sources = {video.video_id: video.fingerprint for video in job.videos}
            encoded = self._decode(job.videos, failed)
        rows = []
        for video in encoded:
            rows.append(video.row(self.fingerprint, sources.get(video.video_id)))
            if self.export:
                self._export(video, self.export)
        return write_feature_part(
            self.root, self.fingerprint, job.part, rows, job.shard or "videos", sources, failed
        )

    def _read(self, shard: str) -> Iterator[EncodedVideo]:
        decoder = self.device if self.shard_decoder == "gpu" else "cpu"
        reader = SnippetReader(self.root, self.schedule.full.name, device=decoder)
        for video in reader.read_shard(shard):
            step = self._step() or len(video.frames)
            values = self.encode(video.frames.split(step))
            yield EncodedVideo(
                video.video_id, values, video.start, video.end, int(video.frames.shape[1])
            )

    def _decode(
        self, videos: Iterable[SourceVideo], failed: dict[str, str]
    ) -> Iterator[EncodedVideo]:
        decoder = SnippetDecoder(
            self.schedule, self.storage_options, self.decode_threads, self.preprocess
        )
        fidelity = self.schedule.full
        for video in videos:
            spans: list[tuple[float, float]] = []

            def batches(
                video: SourceVideo = video, spans: list[tuple[float, float]] = spans
            ) -> Iterator[torch.Tensor]:
                pending: list[np.ndarray] = []
                for snippet in decoder.snippets(
                    video.uri, video.start_time, video.duration, (fidelity,)
                ):
                    spans.append((snippet.start, snippet.end))
                    pending.append(snippet.frames.transpose(0, 3, 1, 2))  # as shards hold
                    if len(pending) == self._step():
                        yield torch.from_numpy(np.stack(pending))
                        pending = []
                if pending:
                    yield torch.from_numpy(np.stack(pending))

            try:
                values = self.encode(batches())
            except VideoFailure as failure:
                failed[video.video_id] = failure.line
                continue
            times = np.array(spans, np.float64)
            yield EncodedVideo(video.video_id, values, times[:, 0], times[:, 1], fidelity.frames)

    def _export(self, video: EncodedVideo, export: str) -> None:
        out = Store(export, self.storage_options)
        buffer = io.BytesIO()
        np.save(buffer, video.values)
        out.write_bytes(f"{video.video_id}.npy", buffer.getvalue())
        centers = video.center.tolist()
        stride = float(np.median(np.diff(centers))) if len(centers) > 1 else None
        out.write_text(
            f"{video.video_id}.json",
            json.dumps(
                {
                    "video_id": video.video_id,
                    "shape": list(video.values.shape),
                    "feature_stride_s": stride,
                    "fps": (1.0 / stride) if stride else None,
                    "clip_length_frames": video.clip_frames,
                    "snippet_start": video.start.tolist(),
                    "snippet_end": video.end.tolist(),
                    "snippet_center": centers,
                    "encoder_fingerprint": self.fingerprint,
                }
            ),
        )


class ExtractActor:
    """Hosts one extractor (and so one loaded model) in a Ray actor: a part in, its stats
    out."""

    def __init__(self, extractor: FeatureExtractor, threads: int):
        # Ray pins a worker to one thread unless told; an actor gets the CPUs it holds.
        torch.set_num_threads(threads)
        # The GPU Ray assigned this actor, if any: never one it was not given.
        self.extractor = dataclasses.replace(extractor, device=str(assigned_device()))

    def process(self, job: PartJob) -> dict[str, Any]:
        return self.extractor.process(job)
