"""Feature extraction stage: an encoder over the full-fidelity snippets of each video.

    ROOT/features/<fingerprint>/lineage.json           what the features depend on
    ROOT/features/<fingerprint>/part-NNNNN.parquet     one row per video (FEATURES schema)
    ROOT/features/<fingerprint>/part-NNNNN.stats.json  commit marker, written last
    <export>/<video_id>.npy + <video_id>.json          (T, C) float32 for ActionFormer/OpenTAD

Part N holds the videos of snippet shard N, so a rerun skips parts whose marker matches the
shard's source fingerprints, and a new checkpoint (a new fingerprint) writes beside the old
features without touching them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lofipipe import __version__
from lofipipe.pipeline.snippet_reader import SnippetReader, VideoSnippets
from lofipipe.schemas.tables import FEATURES
from lofipipe.storage import Store

LINEAGE = "lineage.json"


def part_path(fingerprint: str, part: int) -> str:
    return f"features/{fingerprint}/part-{part:05d}.parquet"


def part_stats_path(fingerprint: str, part: int) -> str:
    return f"features/{fingerprint}/part-{part:05d}.stats.json"


@dataclass
class FeatureExtractor:
    """Encodes the videos of one snippet shard and writes their feature part.

    Args:
        root: where `shards/` and `features/` live.
        fidelity: the shard fidelity to read (the schedule's full one).
        encoder: a callable building the (weighted) encoder, run in the worker.
        fingerprint: the encoder fingerprint naming the output folder.
        batch_size: snippets per forward pass (a LoSA encoder takes a video at once).
        export: folder URL for per-video .npy files, or None.
    """

    root: Store
    fidelity: str
    encoder: Any
    fingerprint: str
    batch_size: int = 32
    export: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    resources = {"num_cpus": 1}

    def __post_init__(self):
        self._model = None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = self.encoder().eval()
            if torch.cuda.is_available():
                self._model = self._model.cuda()
        return self._model

    def encode(self, video: VideoSnippets) -> np.ndarray:
        """The (L, C) float32 features of a video's snippets."""
        model = self.model
        device = next(model.parameters()).device
        size = len(video.frames) if getattr(model, "losa", False) else self.batch_size
        outputs = []
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            for first in range(0, len(video.frames), size):
                batch = video.frames[first: first + size].to(device, non_blocking=True)
                outputs.append(model(batch).float().cpu())
        return torch.cat(outputs).numpy().astype(np.float32)

    def process(self, shard: str) -> dict[str, Any]:
        """Writes the feature part of one snippet shard; returns its stats."""
        part = int(shard.rsplit("part-", 1)[1][:5])
        reader = SnippetReader(self.root, self.fidelity)
        stats = json.loads(self.root.read_text(shard.replace(".parquet", ".stats.json")))
        rows = []
        for video in reader.read_shard(shard):
            values = self.encode(video)
            fingerprint = stats["source_fingerprints"].get(video.video_id)
            rows.append({
                "video_id": video.video_id, "encoder_fingerprint": self.fingerprint,
                "num_snippets": len(values), "dim": values.shape[1],
                "values": values.ravel(), "snippet_start": video.start,
                "snippet_end": video.end, "source_fingerprint": fingerprint})
            if self.export:
                self._export(video, values)
        self.root.write_table(part_path(self.fingerprint, part), FEATURES.from_rows(rows))
        record = {"part": part, "shard": shard, "videos": [r["video_id"] for r in rows],
                  "rows": len(rows), "source_fingerprints": stats["source_fingerprints"],
                  "lofipipe_version": __version__}
        self.root.write_text(part_stats_path(self.fingerprint, part),
                             json.dumps(record, indent=1))
        return record

    def _export(self, video: VideoSnippets, values: np.ndarray) -> None:
        out = Store(self.export, self.storage_options)
        buffer = io.BytesIO()
        np.save(buffer, values)
        out.write_bytes(f"{video.video_id}.npy", buffer.getvalue())
        centers = video.center.tolist()
        stride = float(np.median(np.diff(centers))) if len(centers) > 1 else None
        out.write_text(f"{video.video_id}.json", json.dumps({
            "video_id": video.video_id, "shape": list(values.shape),
            "feature_stride_s": stride, "fps": (1.0 / stride) if stride else None,
            "clip_length_frames": int(video.frames.shape[1]),
            "snippet_start": video.start.tolist(), "snippet_end": video.end.tolist(),
            "snippet_center": centers, "encoder_fingerprint": self.fingerprint}))


def read_features(root: Store, fingerprint: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """video_id -> ((T, C) features, (T, 2) snippet start/end) of one fingerprint."""
    out = {}
    for name in root.list(f"features/{fingerprint}", pattern="part-*.stats.json"):
        table = FEATURES.check(root.read_table(name.replace(".stats.json", ".parquet")),
                               root.url_of(name))
        for row in table.to_pylist():
            values = np.asarray(row["values"], np.float32).reshape(row["num_snippets"],
                                                                   row["dim"])
            out[row["video_id"]] = (values, np.stack([row["snippet_start"],
                                                      row["snippet_end"]], axis=1))
    return out
