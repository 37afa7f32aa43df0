"""Decoding h264 shards: each snippet's own colour, and decoding on a GPU's video decoder
(the CPU-side contract, on CPU-only machines; scripts/gpu_check.py runs the real decoder
where a GPU is lent)."""

import numpy as np
import pytest
import torch
from support.nvdec import install_nvdec_stand_in

from lofipipe.errors import ConfigError
from lofipipe.media.frame_codec import Color, FrameCodec, decode_frames


def _colourful_snippets(count: int = 3, size: int = 64) -> list[np.ndarray]:
    """I420 snippets of saturated colour bars drifting sideways: BT.601 and BT.709 turn
    them into RGB several levels apart."""
    snippets = []
    for number in range(count):
        frames = np.empty((8, size * 3 // 2, size), np.uint8)
        for slot in range(8):
            shift = (number * 8 + slot) * 2
            bars = (np.arange(size) + shift) // 8 % 4
            frames[slot, :size] = np.array([81, 145, 41, 210], np.uint8)[bars][None, :]
            chroma = frames[slot, size:].reshape(-1)
            half = size // 2
            u = np.array([90, 54, 240, 16], np.uint8)[bars[::2]][None, :].repeat(half, 0)
            v = np.array([240, 34, 110, 146], np.uint8)[bars[::2]][None, :].repeat(half, 0)
            chroma[: half * half] = u.reshape(-1)
            chroma[half * half :] = v.reshape(-1)
        snippets.append(frames)
    return snippets


def test_gpu_decoded_snippets_equal_the_cpu_decode(monkeypatch):
    # BT.709, limited range: what a HD source's shards are tagged with.
    column = FrameCodec("h264").column(_colourful_snippets(), Color(1, 1))
    on_cpu = np.empty((24, 3, 64, 64), np.uint8)
    decode_frames("h264", column, on_cpu, threads=2)
    made = install_nvdec_stand_in(monkeypatch)
    on_gpu = np.empty_like(on_cpu)
    decode_frames("h264", column, on_gpu, threads=2, device="cuda:0")
    assert made and {decoder.device for decoder in made} == {"cuda:0"}
    assert sum(decoder.decoded for decoder in made) == 24
    # NV12 against yuv420p: the same samples, so the same RGB.
    assert np.abs(on_gpu.astype(int) - on_cpu).max() <= 1
    # The stand-in's frames carry no colour tags; converted by them (BT.601 by default)
    # instead of the stream's BT.709, the colour bars would be off by several levels.
    assert np.abs(on_gpu.astype(int) - on_cpu).mean() < 0.1


def test_the_colour_of_untagged_frames_matters():
    # The check above can fail: the same frames through BT.601 are visibly off.
    snippets = _colourful_snippets(1)
    bt709 = np.empty((8, 3, 64, 64), np.uint8)
    bt601 = np.empty_like(bt709)
    decode_frames("h264", FrameCodec("h264").column(snippets, Color(1, 1)), bt709, threads=1)
    decode_frames("h264", FrameCodec("h264").column(snippets, Color(6, 1)), bt601, threads=1)
    assert np.abs(bt709.astype(int) - bt601).max() > 8


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_each_snippet_is_converted_by_its_own_colour(monkeypatch, device):
    # Shards of a BT.709 source and of an untagged one (BT.601 by default) read by the same
    # decoder, one after the other: the second keeps its own colour, not the first's.
    install_nvdec_stand_in(monkeypatch)
    snippets = _colourful_snippets(1)
    untagged = FrameCodec("h264").column(snippets, Color())
    fresh = np.empty((8, 3, 64, 64), np.uint8)
    decode_frames("h264", untagged, fresh, threads=1, device=device)
    after = np.empty_like(fresh)
    decode_frames("h264", FrameCodec("h264").column(snippets, Color(1, 1)), after, 1, device)
    decode_frames("h264", untagged, after, threads=1, device=device)
    assert np.array_equal(after, fresh)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_decoding_without_a_gpu_is_one_clear_line():
    column = FrameCodec("h264").column(_colourful_snippets(1), Color())
    out = np.empty((8, 3, 64, 64), np.uint8)
    with pytest.raises(ConfigError) as raised:
        decode_frames("h264", column, out, threads=1, device="cuda")
    assert "cannot decode shards on cuda" in str(raised.value)
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match="the choices are cpu and cuda"):
        decode_frames("h264", column, out, threads=1, device="npu:0")


def test_only_h264_shards_decode_on_a_gpu():
    column = FrameCodec("jpeg").column([np.zeros((8, 64, 64, 3), np.uint8)])
    with pytest.raises(ConfigError, match="only h264 shards decode on cuda:0; these store jpeg"):
        decode_frames("jpeg", column, np.empty((8, 3, 64, 64), np.uint8), device="cuda:0")
