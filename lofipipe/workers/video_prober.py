"""Probe stage: the facts of one video file, or a one-line reason why it cannot be used."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import IO, TYPE_CHECKING, Any, ClassVar

import av
import fsspec

from lofipipe import __version__
from lofipipe.errors import VideoFailure, one_line
from lofipipe.media.decode import normal_rotation
from lofipipe.schemas.config import IngestConfig

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream


@dataclass(frozen=True)
class VideoItem:
    """One listed video file."""

    video_id: str
    uri: str
    size: int
    source_signature: str  # size + mtime or ETag, to notice a changed file cheaply


def source_signature(info: Mapping[str, Any]) -> str:
    """A cheap change detector from fsspec file info: size plus ETag or modification time."""
    stamp = (
        info.get("ETag")
        or info.get("etag")
        or info.get("mtime")
        or info.get("LastModified")
        or info.get("last_modified")
        or ""
    )
    return f"{info.get('size', '')}:{str(stamp).strip(chr(34))}"


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


_END_TOLERANCE_S = 1.0  # how far the last frame may fall short of the container's claim


def _claimed_end(
    container: InputContainer, stream: VideoStream, time_base: Fraction, start: float
) -> float | None:
    """The earliest end time the headers allow: a container-level duration is read both as
    a length and as an end time, since muxers disagree (Matroska writes the end)."""
    if stream.duration:
        return start + float(stream.duration * time_base)
    if container.duration:
        length = container.duration / av.time_base
        return length if length > start else start + length
    return None


# How far before the claimed end `_measure_end` seeks, in turn, for a keyframe; the last
# step is the start of the file.
_SEEK_BACK_S = (0.0, 10.0, 120.0, float("inf"))


def _measure_end(
    container: InputContainer, stream: VideoStream, time_base: Fraction, claimed: float, rate: float
) -> float | None:
    """When the last decodable frame stops showing, by decoding from the last keyframe
    before the claimed end. A file cut short behind a complete index (an MP4 with its moov
    atom first) opens fine and shows itself only here.

    The last frame is taken to show as long as the gap before it (muxers often give it a
    nominal duration of one tick), or one frame at `rate` if it is the only one decoded.

    Formats without an index (MPEG transport streams) seek by byte position and may land
    after the last keyframe, where nothing decodes: the seek then goes further back, up to
    the start of the file.
    """
    for back in _SEEK_BACK_S:
        target = max(0.0, claimed - back)
        last = gap = None
        try:
            container.seek(int(target / time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time is not None:
                    gap = frame.time - last if last is not None else gap
                    last = frame.time
        except av.error.FFmpegError:
            pass
        if last is not None:
            return last + (gap or 1.0 / rate)
        if target == 0.0:
            break
    return None


@dataclass
class VideoProber:
    """Probes one video: container and stream facts, one decoded frame, a content hash.

    Args:
        storage_options: fsspec options for reading the video URLs.
        settings: the hashing block size and the resource limits (pixels, duration, bytes).
    """

    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    settings: IngestConfig = field(default_factory=IngestConfig)
    name = "probe"
    resources: ClassVar[Mapping[str, float]] = {"num_cpus": 1}

    def process(self, item: VideoItem) -> dict[str, Any]:
        """A manifest row for `item`, with `status` ok or failed (and a one-line `error`)."""
        row: dict[str, Any] = {
            "video_id": item.video_id,
            "uri": item.uri,
            "size": item.size,
            "source_signature": item.source_signature,
            "lofipipe_version": __version__,
        }
        started = time.monotonic()
        try:
            if item.size == 0:
                raise VideoFailure("empty_file", "empty file (0 bytes)")
            if item.size > self.settings.max_file_gb * 1e9:
                raise VideoFailure(
                    "too_large_file",
                    f"{item.size / 1e9:.3g} GB, over "
                    f"ingest.max_file_gb="
                    f"{self.settings.max_file_gb:g}",
                )
            with fsspec.open(item.uri, "rb", **self.storage_options) as handle:
                row.update(self._probe_container(handle))
                handle.seek(0)
                row["fingerprint"] = self._fingerprint(handle)
            row.update(status="ok", error=None)
        except VideoFailure as failure:
            row.update(status="failed", error=failure.line)
        except OSError as error:
            row.update(status="failed", error=VideoFailure("read_error", one_line(error)).line)
        row["probe_seconds"] = time.monotonic() - started
        return row

    def _probe_container(self, handle: IO[bytes]) -> dict[str, Any]:
        try:
            # "r", which av.open would read off the handle's "rb" anyway, types it as input
            container = av.open(handle, "r", metadata_errors="ignore")
        except av.error.FFmpegError as error:
            raise VideoFailure(
                "not_a_video", f"not a readable video container ({one_line(error)})"
            ) from None
        with container:
            if not container.streams.video:
                kind = "audio only" if container.streams.audio else "no streams"
                raise VideoFailure("no_video_stream", f"no video stream ({kind})")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > self.settings.max_pixels:  # from the headers: nothing decoded
                raise VideoFailure(
                    "too_many_pixels",
                    f"{width}x{height} frames, over ingest.max_pixels={self.settings.max_pixels}",
                )
            stream.thread_type = "AUTO"
            frame = None
            with contextlib.suppress(av.error.FFmpegError, StopIteration):
                frame = next(container.decode(stream))
            if frame is None:
                raise VideoFailure("undecodable", "no video frame could be decoded")
            # FFmpeg sets a time base on every demuxed stream; PyAV's type allows None.
            time_base = stream.time_base
            if time_base is None:
                raise VideoFailure("no_duration", "the video stream has no time base")
            start = _seconds(stream.start_time, time_base)
            start = start if start is not None else frame.time
            rate = float(stream.average_rate or stream.guessed_rate or 0) or None
            claimed = _claimed_end(container, stream, time_base, start)
            if claimed is None or claimed <= start:
                raise VideoFailure("no_duration", "the container gives no duration")
            end = _measure_end(container, stream, time_base, claimed, rate or 25.0)
            if end is None or end < claimed - _END_TOLERANCE_S:
                shown = "nothing" if end is None else f"frames up to {end - start:.3g} s"
                raise VideoFailure(
                    "truncated",
                    f"the headers promise "
                    f"{claimed - start:.3g} s but {shown} decode: "
                    f"the file is cut short or corrupt",
                )
            if end - start > self.settings.max_duration_s:
                raise VideoFailure(
                    "too_long",
                    f"{(end - start) / 3600:.3g} h, over "
                    f"ingest.max_duration_s="
                    f"{self.settings.max_duration_s:g}",
                )
            return {
                # Measured, not read: the span from the first frame to the end of the last.
                "duration": end - start,
                "start_time": start,
                "avg_fps": rate,
                "num_frames": stream.frames or None,
                "width": stream.codec_context.width or frame.width,
                "height": stream.codec_context.height or frame.height,
                "rotation": normal_rotation(frame.rotation or 0),
                "codec": stream.codec_context.name,
                "has_audio": bool(container.streams.audio),
            }

    def _fingerprint(self, handle: IO[bytes]) -> str:
        digest = hashlib.blake2b(digest_size=16)
        while block := handle.read(self.settings.fingerprint_block_mb * 2**20):
            digest.update(block)
        return digest.hexdigest()
