"""How snippet frames are stored in shards, one `frames` list per snippet.

- `h264` (the default): each snippet is a short H.264 stream of its F frames, the first an
  IDR picture carrying its own parameter sets, so every snippet decodes on its own. The
  writer takes frames in YUV 4:2:0 as the source video has them (scaled in YUV, see
  media/decode.py) and tags the stream with the source's colour matrix and range, which
  the reader converts to RGB by (`to_planar_rgb`). About 2 to 3% of
  `raw` on real footage, below the source video's own size (bench/peer_bench.py).
- `jpeg`: each frame a JPEG (libjpeg-turbo through simplejpeg, 4:2:0), about 10% of raw.
- `raw`: each frame planar RGB (3, S, S) bytes: reading is a copy, for small jobs on fast
  local disks.

Readers decode the snippets of a video on a thread pool: libavcodec and libjpeg-turbo
release the GIL, and each thread keeps one long-lived H.264 decoder. Where a GPU is
present, `h264` snippets may be decoded on its video decoder instead (`h264_decoder`).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pyarrow as pa
import simplejpeg
import torch
from av.codec.hwaccel import HWAccel
from av.video.reformatter import Interpolation, VideoReformatter

from lofipipe.errors import ConfigError, one_line

ENCODINGS = ("h264", "jpeg", "raw")
YUV_ENCODINGS = ("h264",)  # encodings whose writer takes YUV 4:2:0 frames, not RGB


@dataclass(frozen=True)
class Color:
    """How a YUV frame turns into RGB: FFmpeg's colour matrix and range codes
    (AVColorSpace, AVColorRange), as the source video's frames carry them."""

    space: int = 2  # unspecified: BT.601, as FFmpeg takes it
    range: int = 0  # unspecified: from the pixel format (limited for yuv420p)


@dataclass
class FrameCodec:
    """Turns the snippets of one video at one fidelity into `frames` column values.

    One is made per video and fidelity: the H.264 encoder lives as long as the video.
    Frames come as (F, S, S, 3) RGB, or for `YUV_ENCODINGS` as (F, E * 3 // 2, E) I420
    (the planes Y, U, V one after the other, as PyAV's yuv420p arrays; E = S rounded up
    to even, the reader crops the repeated last row and column of an odd S).
    """

    encoding: str
    jpeg_quality: int = 90
    crf: int = 24
    x264_preset: str = "ultrafast"
    _encoder: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(
                f"unknown frame encoding {self.encoding!r} (known: {', '.join(ENCODINGS)})"
            )

    @property
    def settings(self) -> dict[str, Any] | None:
        """What besides the encoding's name changes the stored pixels (kept in lineages)."""
        if self.encoding == "h264":
            return {"crf": self.crf, "x264_preset": self.x264_preset}
        return {"quality": self.jpeg_quality} if self.encoding == "jpeg" else None

    def column(self, snippets: Sequence[np.ndarray], color: Color | None = None) -> pa.ListArray:
        """The `frames` column of a batch of snippets, in order."""
        counts = np.array([len(snippet) for snippet in snippets])
        starts = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        if self.encoding == "raw":
            values = _raw_values(snippets)
        elif self.encoding == "jpeg":
            values = pa.array(
                [
                    simplejpeg.encode_jpeg(
                        np.ascontiguousarray(frame), self.jpeg_quality, "RGB", "420"
                    )
                    for snippet in snippets
                    for frame in snippet
                ],
                pa.binary(),
            )
        else:
            values = pa.array(
                [packet for snippet in snippets for packet in self._h264(snippet, color)],
                pa.binary(),
            )
        return pa.ListArray.from_arrays(starts, values)

    def _h264(self, frames: np.ndarray, color: Color | None) -> list[bytes]:
        """One snippet's F frames as F H.264 packets, the first an IDR picture."""
        size = frames.shape[2]
        if self._encoder is None:
            color = color or Color()
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width = encoder.height = size
            encoder.pix_fmt = "yuv420p"
            encoder.time_base = Fraction(1, 25)
            encoder.colorspace, encoder.color_range = color.space, color.range
            # A keyframe at each snippet's first frame and none between; no B-frames and no
            # lookahead (zerolatency), so each frame comes out as one packet at once and a
            # snippet's packets are complete when its last frame goes in. No CABAC: a third
            # of the decode time for 8% more bytes. ultrafast at CRF 24 gave the PSNR of
            # superfast at CRF 23 (within 0.6 dB) for 27% more bytes and 40% less encoding
            # time, which took materialize at 360p to the source's decode limit.
            encoder.options = {
                "crf": str(self.crf),
                "preset": self.x264_preset,
                "tune": "zerolatency",
                "x264-params": f"keyint={len(frames)}:min-keyint={len(frames)}:scenecut=0:"
                "bframes=0:cabac=0:threads=1",
            }
            self._encoder = encoder
        # A frame whose chroma rows are whole (E a multiple of 4) wraps the array as it
        # is; others are copied into FFmpeg's row layout.
        wrap = av.VideoFrame.from_numpy_buffer if size % 4 == 0 else av.VideoFrame.from_ndarray
        packets = []
        for array in frames:
            packets += self._encoder.encode(wrap(array, format="yuv420p"))
        if len(packets) != len(frames) or not packets[0].is_keyframe:
            raise RuntimeError(
                f"x264 gave {len(packets)} packets for {len(frames)} frames, the first "
                f"{'a' if packets and packets[0].is_keyframe else 'no'} keyframe"
            )
        return [bytes(packet) for packet in packets]


def _raw_values(snippets: Sequence[np.ndarray]) -> pa.Array:
    """Planar RGB frames transposed once into one buffer that the column wraps as it is."""
    count, size = sum(len(snippet) for snippet in snippets), snippets[0].shape[1]
    buffer = np.empty((count, 3, size, size), np.uint8)
    at = 0
    for snippet in snippets:
        buffer[at : at + len(snippet)] = snippet.transpose(0, 3, 1, 2)
        at += len(snippet)
    offsets = np.arange(count + 1, dtype=np.int32) * (3 * size * size)
    return pa.Array.from_buffers(
        pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(buffer)]
    )


def read_threads() -> int:
    """Threads a reader decodes on: the CPUs this process may use (Ray workers are held
    to their share through OMP_NUM_THREADS, which torch follows)."""
    return max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0))))


_pools: dict[int, ThreadPoolExecutor] = {}
_local = threading.local()


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="lofipipe-decode")
    return _pools[threads]


def decode_frames(
    encoding: str,
    frames: pa.ListArray,
    out: np.ndarray,
    threads: int | None = None,
    device: str = "cpu",
) -> None:
    """Decodes the frames of a batch of snippets (a `frames` column chunk of one of
    `ENCODINGS`) into `out`, (N, 3, S, S) uint8 with N the frames in all, snippets decoded
    in parallel; `h264` snippets on `device`'s decoder (see `h264_decoder`).

    Raises:
        ConfigError: `device` is not the CPU and the frames are not `h264`, or FFmpeg
            cannot open the device.
    """
    if device != "cpu" and encoding != "h264":
        raise ConfigError(
            f"only h264 shards decode on {device}; these store {encoding} frames "
            "(decode them on the cpu, or materialize again with --encoding h264)"
        )
    values = frames.flatten()
    if encoding == "raw":  # equal-sized planar frames back to back: copied once
        offsets = np.frombuffer(values.buffers()[1], np.int32)[
            values.offset : values.offset + len(values) + 1
        ]
        part = np.frombuffer(
            values.buffers()[2],
            np.uint8,
            offset=int(offsets[0]),
            count=int(offsets[-1] - offsets[0]),
        )
        out[:] = part.reshape(out.shape)
        return
    decode = functools.partial(_decode_h264, device=device) if encoding == "h264" else _decode_jpeg
    bounds = frames.offsets.to_numpy() - frames.offsets[0].as_py()
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    work = [(values.slice(first, last - first), out[first:last]) for first, last in spans]
    threads = threads or read_threads()
    if threads == 1 or len(work) == 1:
        for snippet, target in work:
            decode(snippet, target)
    else:
        for _ in _pool(threads).map(lambda item: decode(*item), work):
            pass


def _decode_jpeg(encoded: pa.BinaryArray, out: np.ndarray) -> None:
    for index, data in enumerate(encoded):
        out[index] = simplejpeg.decode_jpeg(
            np.frombuffer(data.as_buffer(), np.uint8), "RGB"
        ).transpose(2, 0, 1)


def h264_decoder(device: str = "cpu") -> Any:
    """A long-lived H.264 decoder for snippets: on the CPU, one thread (readers decode
    snippets in parallel), or for `cuda` / `cuda:N` on that GPU's video decoder (NVDEC)
    through FFmpeg's CUDA hwaccel, in the device's primary CUDA context (the one PyTorch
    uses: no context of its own to hold memory). Its pictures come back to host memory as
    NV12, without colour tags; frames too small for NVDEC (under 48 pixels wide) fall
    back to FFmpeg's CPU decoder.

    Raises:
        ConfigError: `device` is not cpu or cuda[:N], or FFmpeg cannot open it.
    """
    if device == "cpu":
        decoder = av.CodecContext.create("h264", "r")
        decoder.thread_count = 1  # the pool is the parallelism
        return decoder
    kind, _, index = device.partition(":")
    if kind != "cuda" or not (index or "0").isdigit():
        raise ConfigError(f"cannot decode shards on {device!r}: the choices are cpu and cuda[:N]")
    accel = HWAccel(
        "cuda", index or "0", allow_software_fallback=True, options={"primary_ctx": "1"}
    )
    try:
        return av.CodecContext.create("h264", "r", hwaccel=accel)
    except (OSError, av.error.FFmpegError) as error:
        raise ConfigError(
            f"cannot decode shards on {device}: FFmpeg's CUDA decoder could not open it "
            f"(is there an NVIDIA GPU with its driver?): {one_line(error)}"
        ) from None


def _decode_h264(encoded: pa.BinaryArray, out: np.ndarray, device: str) -> None:
    """One snippet's packets into `out` (F, 3, S, S), on this thread's decoder for
    `device`."""
    decoders = _local.__dict__.setdefault("decoders", {})
    if device not in decoders:
        decoders[device] = h264_decoder(device)
        _local.reformatter = VideoReformatter()
    decoder = decoders[device]
    # A snippet's parameter sets carry its stream's colour, or none; a decoder keeps the
    # colour of an earlier snippet when a later one has none (shards of untagged sources
    # beside tagged ones), so each snippet starts from unspecified.
    decoder.colorspace, decoder.color_range = 2, 0
    decoded = [frame for data in encoded for frame in decoder.decode(av.Packet(data.as_buffer()))]
    if len(decoded) < len(out):  # a decoder that held frames back: drain it
        decoded += decoder.decode(None)
        decoder.flush_buffers()
    if len(decoded) != len(out):
        raise ValueError(f"an H.264 snippet gave {len(decoded)} frames, not {len(out)}")
    # The stream's colour, as the decoder read it from the parameter sets: frames that
    # come back from a GPU carry no colour tags.
    color = Color(decoder.colorspace, decoder.color_range)
    for index, frame in enumerate(decoded):
        to_planar_rgb(frame, out[index], color, _local.reformatter)


def to_planar_rgb(
    frame: av.VideoFrame, out: np.ndarray, color: Color, reformatter: VideoReformatter
) -> None:
    """A YUV frame (yuv420p or NV12) into `out` (3, S, S) as RGB (its top-left S x S), by
    `color`, chroma interpolated bilinearly: FFmpeg's default conversion repeats each
    chroma sample 2 x 2, 5 to 10 levels off at colour edges of a 224-pixel frame."""
    planar = reformatter.reformat(
        frame,
        format="gbrp",
        src_colorspace=color.space or None,
        src_color_range=color.range or None,
        interpolation=Interpolation.BILINEAR | Interpolation.ACCURATE_RND,
        threads=1,
    )
    size = out.shape[1]
    for channel, plane in zip((1, 2, 0), planar.planes, strict=True):  # gbrp: G, B, R
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        out[channel] = rows[:size, :size]
