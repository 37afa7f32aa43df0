"""A stand-in for a GPU's H.264 decoder on machines without one.

FFmpeg's CUDA hwaccel decodes on the GPU and hands each picture back to host memory as
NV12 without the stream's colour tags. `NvdecStandIn` decodes on the CPU and hands back
the same kind of frame, so that everything around the GPU decoder (which decoder a
device gets, the pixel format, where the colour comes from) runs on CPU-only CI.
"""

from __future__ import annotations

from typing import Any

import pytest

from lofipipe.media import frame_codec


def _of_the_cpu_decoder(name: str) -> Any:
    """A property read from and written to the wrapped CPU decoder: the stream's colour,
    which FFmpeg keeps on the codec context whichever device decodes."""
    return property(
        lambda self: getattr(self._cpu, name), lambda self, value: setattr(self._cpu, name, value)
    )


class NvdecStandIn:
    """What `h264_decoder("cuda:N")` returns, as far as its callers can see."""

    def __init__(self, device: str):
        self.device = device
        self.decoded = 0
        self._cpu = frame_codec.h264_decoder("cpu")

    colorspace = _of_the_cpu_decoder("colorspace")
    color_range = _of_the_cpu_decoder("color_range")

    def decode(self, packet=None) -> list:
        frames = []
        for frame in self._cpu.decode(packet):
            downloaded = frame.reformat(format="nv12")
            downloaded.colorspace, downloaded.color_range = 2, 0  # unspecified: untagged
            frames.append(downloaded)
        self.decoded += len(frames)
        return frames

    def flush_buffers(self) -> None:
        self._cpu.flush_buffers()


def install_nvdec_stand_in(monkeypatch: pytest.MonkeyPatch) -> list[NvdecStandIn]:
    """Makes every GPU decoder a reader asks for a stand-in (CPU decoders stay real);
    returns the list of those made."""
    made: list[NvdecStandIn] = []
    real = frame_codec.h264_decoder

    def decoder(device: str = "cpu"):
        if device == "cpu":
            return real(device)
        made.append(NvdecStandIn(device))
        return made[-1]

    monkeypatch.setattr(frame_codec, "h264_decoder", decoder)
    monkeypatch.setattr(frame_codec, "_local", frame_codec.threading.local())
    return made
