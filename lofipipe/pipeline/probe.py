"""Probe stage: the facts of one video file, or a one-line reason why it cannot be used."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import av
import fsspec

from lofipipe import __version__


@dataclass(frozen=True)
class VideoItem:
    """One listed video file."""

    video_id: str
    uri: str
    size: int
    source_signature: str  # size + mtime or ETag, to notice a changed file cheaply


class ProbeFailure(Exception):
    """A video that cannot be used; `reason` is a short code to count failures by."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def source_signature(info: Mapping[str, Any]) -> str:
    """A cheap change detector from fsspec file info: size plus ETag or modification time."""
    stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get(
        "LastModified") or info.get("last_modified") or ""
    return f"{info.get('size', '')}:{str(stamp).strip(chr(34))}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _seconds(value: int | None, time_base) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _normal_rotation(degrees: float) -> int:
    return int(round(degrees / 90.0)) % 4 * 90


@dataclass
class VideoProber:
    """Probes one video: container and stream facts, one decoded frame, a content hash.

    Args:
        storage_options: fsspec options for reading the video URLs.
        block_mb: read size for hashing.
    """

    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    block_mb: int = 8
    resources = {"num_cpus": 1}

    def process(self, item: VideoItem) -> dict[str, Any]:
        """A manifest row for `item`, with `status` ok or failed (and a one-line `error`)."""
        row: dict[str, Any] = {
            "video_id": item.video_id, "uri": item.uri, "size": item.size,
            "source_signature": item.source_signature, "lofipipe_version": __version__,
        }
        started = time.monotonic()
        try:
            if item.size == 0:
                raise ProbeFailure("empty_file", "empty file (0 bytes)")
            with fsspec.open(item.uri, "rb", **self.storage_options) as handle:
                row.update(self._probe_container(handle))
                handle.seek(0)
                row["fingerprint"] = self._fingerprint(handle)
            row.update(status="ok", error=None)
        except ProbeFailure as failure:
            row.update(status="failed", error=f"{failure.reason}: {failure}")
        except OSError as error:
            row.update(status="failed", error=f"read_error: {_first_line(error)}")
        row["probe_seconds"] = time.monotonic() - started
        return row

    def _probe_container(self, handle) -> dict[str, Any]:
        try:
            container = av.open(handle, metadata_errors="ignore")
        except av.error.FFmpegError as error:
            raise ProbeFailure("not_a_video", f"not a readable video container "
                                              f"({_first_line(error)})") from None
        with container:
            if not container.streams.video:
                kind = "audio only" if container.streams.audio else "no streams"
                raise ProbeFailure("no_video_stream", f"no video stream ({kind})")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frame = None
            with contextlib.suppress(av.error.FFmpegError, StopIteration):
                frame = next(container.decode(stream))
            if frame is None:
                raise ProbeFailure("undecodable", "no video frame could be decoded")
            duration = _seconds(stream.duration, stream.time_base)
            if duration is None and container.duration is not None:
                duration = container.duration / av.time_base
            if not duration or duration <= 0:
                raise ProbeFailure("no_duration", "the container gives no duration")
            start = _seconds(stream.start_time, stream.time_base)
            rate = stream.average_rate or stream.guessed_rate
            return {
                "duration": duration,
                "start_time": start if start is not None else frame.time,
                "avg_fps": float(rate) if rate else None,
                "num_frames": stream.frames or None,
                "width": stream.codec_context.width or frame.width,
                "height": stream.codec_context.height or frame.height,
                "rotation": _normal_rotation(frame.rotation or 0),
                "codec": stream.codec_context.name,
                "has_audio": bool(container.streams.audio),
            }

    def _fingerprint(self, handle) -> str:
        digest = hashlib.blake2b(digest_size=16)
        while block := handle.read(self.block_mb * 2**20):
            digest.update(block)
        return digest.hexdigest()
