"""Tiny real media files for tests, made with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(
    path: Path,
    seconds: float = 2.0,
    size: tuple[int, int] = (64, 48),
    fps: int = 10,
    rotation: int | None = None,
    audio: bool = False,
    container_format: str | None = None,
    pix_fmt: str = "yuv420p",
) -> Path:
    """An H.264 video of a bright square moving across a gradient (odd sizes need
    pix_fmt yuv444p)."""
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation is not None:
            stream.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=16000) if audio else None
        for index in range(round(seconds * fps)):
            image = np.tile(
                np.linspace(0, 200, width, dtype=np.uint8)[None, :, None], (height, 1, 3)
            )
            x = index * 3 % max(width - 8, 1)
            image[height // 2 - 4 : height // 2 + 4, x : x + 8] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
        if sound is not None:
            _write_tone(container, sound, seconds)
    return path


def _write_tone(container, stream, seconds: float) -> None:
    rate, samples = 16000, 1024
    total = int(seconds * rate)
    for start in range(0, total, samples):
        t = (np.arange(start, start + samples) / rate).astype(np.float32)
        wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An .mp4 holding only an AAC audio stream."""
    with av.open(str(path), "w", format="mp4") as container:
        _write_tone(container, container.add_stream("aac", rate=16000), seconds)
    return path


def write_truncated(path: Path, source: Path, keep: float = 0.5) -> Path:
    """The first `keep` fraction of another file's bytes."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_timed_video(
    path: Path,
    times: list[float],
    size: tuple[int, int] = (64, 48),
    container_format: str | None = None,
) -> Path:
    """A video whose frame i is shown from `times[i]` seconds (variable rate, any start),
    and whose pixels encode i: the frame is filled with gray level 8*i (mod 256)."""
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=1000)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"bf": "0"}
        for index, time in enumerate(times):
            image = np.full((height, width, 3), frame_level(index), np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = round(time * 1000)
            frame.time_base = Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def frame_level(index: int) -> int:
    """The gray level `write_timed_video` gives frame `index`."""
    return (8 * index) % 256


def write_marked_video(path: Path, rotation: int, size: tuple[int, int] = (64, 48)) -> Path:
    """One second of a dark frame with a white block in the stored top-left corner."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.set_display_rotation(rotation)
        image = np.full((height, width, 3), 20, np.uint8)
        image[: height // 3, : width // 3] = 255
        for _ in range(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path
