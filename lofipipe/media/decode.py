"""Decode stage: one streaming pass over a video yields the snippets of every fidelity.

Each snippet frame is chosen by presentation time: the frame on screen at the snippet's
target time (correct for variable frame rates and non-zero start times). Each chosen frame
is converted to RGB at its own size once, turned upright by its rotation, and then resized
(and cropped) to every fidelity's size as the `Preprocess` says, so a crop is taken in
upright coordinates. For encodings that store YUV (media/frame_codec.py) the frame is
instead resized in YUV 4:2:0 as the video has it, plane by plane, and never converted to
RGB here: a third of the pixels to scale, and no conversion at the source's size. Only the
snippets still being filled are held in memory, so a long video never sits there whole.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import av
import fsspec
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch.nn import functional

from lofipipe.errors import VideoFailure, one_line
from lofipipe.media.frame_codec import Color
from lofipipe.media.resample import resample, taps
from lofipipe.schemas.preprocess import PREPROCESS_PRESETS, Preprocess
from lofipipe.schemas.schedule import Fidelity, Schedule

_SAME_TIME = 1e-6


def normal_rotation(degrees: float) -> int:
    """A frame's rotation metadata as 0, 90, 180 or 270 degrees."""
    return int(round(degrees / 90.0)) % 4 * 90


def resize_image(image: np.ndarray, preprocess: Preprocess, size: int) -> np.ndarray:
    """An upright uint8 RGB image (H, W, 3) as the S x S input `preprocess` makes of it.

    Bilinear with half-pixel centres and no anti-aliasing, as OpenCV's INTER_LINEAR
    (MMAction2) and `torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)` (VideoMAE-v2) compute it; torch's uint8 kernel rounds to whole
    levels (at most one level from the float result), and costs about as much as FFmpeg's
    scaler (bench/materialize_bench.py).
    """
    height, width = image.shape[:2]
    resized_width, resized_height, left, top = preprocess.geometry(width, height, size)
    if (resized_width, resized_height) != (width, height):
        tensor = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)  # channels-last
        tensor = functional.interpolate(
            tensor,
            size=(resized_height, resized_width),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )
        image = tensor[0].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def resize_yuv420(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray], preprocess: Preprocess, size: int
) -> np.ndarray:
    """Upright Y, U, V planes of a 4:2:0 image as the S x S input `preprocess` makes of
    it, in I420 layout (E * 3 // 2, E), E = `even(S)` (an odd S repeats its last row and
    column): luma as `resize_image` resizes each RGB channel (rounded from float, so within
    half a level of the float result), chroma by the same mapping at half resolution."""
    height, width = planes[0].shape
    resized_width, resized_height, left, top = preprocess.geometry(width, height, size)
    return _i420(planes, height / resized_height, width / resized_width, top, left, size)


def even(size: int) -> int:
    """The frame size YUV 4:2:0 stores an S x S image at."""
    return size + size % 2


def _i420(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray],
    row_scale: float,
    column_scale: float,
    top: int,
    left: int,
    size: int,
) -> np.ndarray:
    """The S x S crop at (`top`, `left`) of the planes resized by 1 / scale (source pixels
    per output pixel), in I420 layout (E * 3 // 2, E): only the cropped part is computed,
    and a chroma crop starting between two samples interpolates between them."""
    stored = even(size)
    half = stored // 2
    luma, *chroma = planes
    out = np.empty((stored * 3 // 2, stored), np.uint8)
    resample(
        luma,
        taps(luma.shape[0], row_scale, top, size, stored),
        taps(luma.shape[1], column_scale, left, size, stored),
        out[:stored],
    )
    rows = taps(chroma[0].shape[0], row_scale, top / 2, half, half)
    columns = taps(chroma[0].shape[1], column_scale, left / 2, half, half)
    for number, plane in enumerate(chroma):  # U then V, each (E/2, E/2) packed row by row
        at = stored * stored + number * half * half
        resample(plane, rows, columns, out.reshape(-1)[at : at + half * half].reshape(half, half))
    return out


@dataclass
class FrameConverter:
    """One decoded frame at a time -> upright S x S RGB for each size (or with `yuv`, YUV
    4:2:0 in I420 layout, see `resize_yuv420`), as `preprocess` says. Keeps its FFmpeg
    scalers for the whole video: building one per frame would cost more than the scaling
    itself."""

    preprocess: Preprocess
    yuv: bool = False
    _scalers: dict[int, VideoReformatter] = field(default_factory=dict)
    _frame: Any = None
    _upright: Any = None
    _done: dict[int, np.ndarray] = field(default_factory=dict)

    def convert(self, frame, size: int) -> np.ndarray:
        """`frame` (an av.VideoFrame) as (S, S, 3) uint8, or (E * 3 // 2, E) with `yuv`;
        repeated calls for the same frame reuse its conversion."""
        if frame is not self._frame:
            self._frame, self._upright, self._done = frame, None, {}
        if size not in self._done:
            if self.preprocess.interpolation == "fast-bilinear":
                self._done[size] = self._fast(frame, size)
            elif self.yuv:
                self._done[size] = resize_yuv420(self._planes(frame), self.preprocess, size)
            else:
                self._done[size] = resize_image(self._rgb(frame), self.preprocess, size)
        return self._done[size]

    @staticmethod
    def color(frame) -> Color:
        """How the YUV `convert` gives of `frame` turns into RGB as `convert` without
        `yuv` turns it: its matrix, full range only for JPEG-range pixel formats."""
        full = frame.format.name.startswith("yuvj")
        return Color(int(frame.colorspace or 2), 2 if full else 1)

    def _planes(self, frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The frame's Y, U, V at its own size (other pixel formats first converted to
        yuv420p), upright."""
        if self._upright is None:
            if frame.format.name not in ("yuv420p", "yuvj420p"):
                frame = self._scalers.setdefault(-1, VideoReformatter()).reformat(
                    frame, format="yuv420p"
                )
            self._upright = _upright_planes(frame, normal_rotation(self._frame.rotation or 0))
        return self._upright

    def _rgb(self, frame) -> np.ndarray:
        """The frame in RGB at its own size, upright."""
        if self._upright is None:
            scaler = self._scalers.setdefault(0, VideoReformatter())
            image = scaler.reformat(frame, format="rgb24").to_ndarray()
            turns = normal_rotation(frame.rotation or 0) // 90
            self._upright = np.ascontiguousarray(np.rot90(image, turns)) if turns else image
        return self._upright

    def _fast(self, frame, size: int) -> np.ndarray:
        """FFmpeg's two-tap FAST_BILINEAR inside the RGB (or YUV 4:2:0) conversion, in
        stored coordinates, then turned upright and cropped there."""
        rotation = normal_rotation(frame.rotation or 0)
        turns = rotation // 90
        upright = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
        width, height, left, top = self.preprocess.geometry(*upright, size)
        if turns % 2:
            width, height = height, width
        scaled = self._scalers.setdefault(size, VideoReformatter()).reformat(
            frame,
            width=width,
            height=height,
            format="yuv420p" if self.yuv else "rgb24",
            interpolation="FAST_BILINEAR",
        )
        if self.yuv:
            return _i420(_upright_planes(scaled, rotation), 1.0, 1.0, top, left, size)
        image = scaled.to_ndarray()
        image = np.rot90(image, turns) if turns else image
        return np.ascontiguousarray(image[top : top + size, left : left + size])


def _upright_planes(frame, rotation: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U, V planes of a yuv420p frame, turned upright by `rotation` degrees: views
    of the frame's buffers (resampling gathers from them, so they are never copied)."""
    planes = []
    for plane in frame.planes:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        planes.append(np.rot90(rows[:, : plane.width], rotation // 90))
    return planes[0], planes[1], planes[2]


@dataclass(frozen=True)
class SnippetPlan:
    """Where the snippets of one fidelity lie in one video (seconds from its start)."""

    fidelity: Fidelity
    start: np.ndarray  # (L,)
    end: np.ndarray  # (L,)
    targets: np.ndarray  # (L, F) the time each frame is sampled at
    stride: int | None = None  # stride sampling: frames at `fps` between snippets
    fps: float | None = None

    @property
    def center(self) -> np.ndarray:
        return (self.start + self.end) / 2

    def keys(self) -> Iterator[tuple[float, int, int]]:
        """(time, snippet, slot) of every frame to sample, in time order, lazily."""
        count, frames = self.targets.shape
        if self.stride is None:  # resize: spans follow each other, so (i, j) is time order
            for index in range(count):
                for slot in range(frames):
                    yield float(self.targets[index, slot]), index, slot
            return
        # Stride: snippets may overlap, so walk the frame grid; grid frame m is slot
        # m - k*stride of every snippet k that covers it.
        for m in range(int(self.targets[-1, -1] * self.fps + 0.5) + 1):
            first = max(0, -(-(m - frames + 1) // self.stride))
            for index in range(first, min(m // self.stride, count - 1) + 1):
                yield (
                    float(self.targets[index, m - index * self.stride]),
                    index,
                    m - index * self.stride,
                )


def plan_snippets(schedule: Schedule, fidelity: Fidelity, duration: float) -> SnippetPlan:
    """The snippets of `fidelity` in a video of `duration` seconds.

    Resize sampling splits the video into L equal spans and samples F frames at the centres
    of F equal sub-spans of each. Stride sampling takes frames at `schedule.fps`, F
    consecutive ones per snippet, a snippet every `snippet_stride` frames, and keeps the
    snippets that end inside the video.

    Raises:
        VideoFailure: the video is too short for one snippet.
    """
    frames = fidelity.frames
    if schedule.sampling == "resize":
        span = duration / fidelity.snippets
        start = np.arange(fidelity.snippets) * span
        end = start + span
        targets = start[:, None] + (np.arange(frames)[None, :] + 0.5) * (span / frames)
        return SnippetPlan(fidelity, start, end, targets)
    fps, stride = schedule.fps, schedule.snippet_stride(fidelity)
    available = math.floor(duration * fps + 1e-6)  # frames at the target rate
    if available < frames:
        raise VideoFailure(
            "too_short",
            f"{duration:.3g} s is shorter than one snippet ({frames} frames at {fps:g} fps)",
        )
    count = (available - frames) // stride + 1
    first = np.arange(count) * stride
    targets = (first[:, None] + np.arange(frames)[None, :]) / fps
    start = first / fps
    return SnippetPlan(fidelity, start, start + frames / fps, targets, stride, fps)


@dataclass
class Snippet:
    """One snippet of one fidelity, with its frames (F, S, S, 3) uint8."""

    fidelity: str
    index: int
    start: float
    end: float
    center: float
    frame_times: list[float]  # presentation time of each chosen frame, from video start
    frames: np.ndarray  # or (F, E * 3 // 2, E) YUV 4:2:0 from a decoder with `yuv`
    color: Color | None = None  # the YUV frames' matrix and range


@dataclass
class _Pending:
    plan: SnippetPlan
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    times: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class SnippetDecoder:
    """Decodes one video once and yields the snippets of the given fidelities.

    Args:
        schedule: sampling mode and rates.
        storage_options: fsspec options to read video URLs.
        threads: decoder threads (0: FFmpeg's choice).
        preprocess: how frames are resized and cropped (its spatial part).
        yuv: snippets in YUV 4:2:0, resized in YUV (see `FrameConverter`).
    """

    schedule: Schedule
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    threads: int = 0
    preprocess: Preprocess = PREPROCESS_PRESETS["squash"]
    yuv: bool = False

    def snippets(
        self,
        uri: str,
        start: float,
        duration: float,
        fidelities: tuple[Fidelity, ...] | None = None,
    ) -> Iterator[Snippet]:
        """Snippets of every fidelity (default: all of the schedule's), in time order.

        Args:
            uri: the video.
            start: presentation time of its first frame (the manifest's `start_time`);
                snippet times count from there.
            duration: its length in seconds (the manifest's `duration`).

        Raises:
            VideoFailure: the video cannot be opened or decoded, or is too short.
        """
        fidelities = fidelities or self.schedule.fidelities
        try:
            with (
                fsspec.open(uri, "rb", **self.storage_options) as handle,
                av.open(handle, metadata_errors="ignore") as container,
            ):
                if not container.streams.video:
                    raise VideoFailure("no_video_stream", "no video stream")
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                stream.thread_count = self.threads
                plans = [plan_snippets(self.schedule, f, duration) for f in fidelities]
                targets = np.sort(np.concatenate([plan.targets.ravel() for plan in plans]))
                frames = _decoded_frames(container, stream, start, targets)
                yield from self._sample(frames, start, plans)
        except av.error.FFmpegError as error:
            raise VideoFailure("decode_error", one_line(error)) from None
        except OSError as error:
            raise VideoFailure("read_error", one_line(error)) from None

    def _sample(self, frames, start: float, plans: list[SnippetPlan]) -> Iterator[Snippet]:
        # Every fidelity's (time, plan, snippet, slot) targets merged into one time-ordered
        # stream: one walk over the frames serves them all.
        keys = heapq.merge(*(_tagged(p, plan) for p, plan in enumerate(plans)))
        key = next(keys, None)
        pending = [_Pending(plan) for plan in plans]
        converter = FrameConverter(self.preprocess, self.yuv)
        shown, shown_time = None, 0.0
        for frame in frames:
            if frame.time is None:
                continue
            time = frame.time - start
            if shown is not None:
                if time <= shown_time:  # a frame out of order: keep the one on screen
                    continue
                # A target within a microsecond of this frame's time belongs to this frame:
                # grid times and presentation times are computed differently.
                while key is not None and key[0] < time - _SAME_TIME:
                    yield from self._fill(pending, key, shown, shown_time, converter)
                    key = next(keys, None)
            shown, shown_time = frame, time
            if key is None:
                break
        if shown is None:
            raise VideoFailure("undecodable", "no video frame could be decoded")
        while key is not None:  # targets past the last frame see the last frame
            yield from self._fill(pending, key, shown, shown_time, converter)
            key = next(keys, None)

    def _fill(
        self, pending: list[_Pending], key, frame, time: float, converter: FrameConverter
    ) -> Iterator[Snippet]:
        _, p, index, slot = key
        state = pending[p]
        size = state.plan.fidelity.size
        shape = (even(size) * 3 // 2, even(size)) if self.yuv else (size, size, 3)
        frames = state.frames.setdefault(
            index, np.empty((state.plan.fidelity.frames, *shape), np.uint8)
        )
        frames[slot] = converter.convert(frame, size)
        state.times.setdefault(index, []).append(time)
        if len(state.times[index]) == state.plan.fidelity.frames:
            plan = state.plan
            yield Snippet(
                plan.fidelity.name,
                index,
                float(plan.start[index]),
                float(plan.end[index]),
                float(plan.center[index]),
                state.times.pop(index),
                state.frames.pop(index),
                converter.color(frame) if self.yuv else None,
            )


def _nal_length_size(stream) -> int | None:
    """The NAL length prefix size of H.264 in MP4/Matroska packets (avcC), else None."""
    extra = stream.codec_context.extradata
    if stream.codec_context.name != "h264" or not extra or len(extra) < 5 or extra[0] != 1:
        return None
    return (extra[4] & 3) + 1


def _is_disposable(data: memoryview, length_size: int) -> bool:
    """Whether no slice of an H.264 access unit is a reference (every nal_ref_idc is 0):
    no other frame is decoded from it, so it may go undecoded."""
    position, slices = 0, 0
    while position + length_size <= len(data):
        size = int.from_bytes(data[position : position + length_size], "big")
        position += length_size
        if size == 0 or position + size > len(data):
            return False
        header = data[position]
        if header & 0x1F in (1, 5):  # coded slice
            slices += 1
            if header & 0x60:
                return False
        position += size
    return slices > 0


def _decoded_frames(container, stream, start: float, targets: np.ndarray) -> Iterator:
    """The video's frames in presentation order, leaving undecoded the H.264 frames that
    nothing references and no target time falls on.

    Such a frame affects no output, yet decoding it is the bulk of the work for sparse
    schedules: in typical H.264 with B-frames a third or more of the frames qualify. A
    frame is kept when any target lies in [pts, pts + duration), so every target still
    sees the frame on screen at its time.
    """
    length_size = _nal_length_size(stream)
    base = float(stream.time_base)
    for packet in container.demux(stream):
        if length_size and packet.pts is not None and packet.duration and not packet.is_keyframe:
            shown = packet.pts * base - start
            until = shown + packet.duration * base
            first = np.searchsorted(targets, shown - _SAME_TIME)
            if (first == len(targets) or targets[first] >= until - _SAME_TIME) and _is_disposable(
                memoryview(packet), length_size
            ):
                continue
        yield from packet.decode()


def _tagged(number: int, plan: SnippetPlan) -> Iterator[tuple[float, int, int, int]]:
    for time, index, slot in plan.keys():
        yield time, number, index, slot
