"""Feature files as ActionFormer and OpenTAD publish them, and their snippet times.

The layouts: ActionFormer (happyharrycn/actionformer_release, libs/datasets/thumos14.py)
loads `<video_id>.npy` with `np.load` as T x C and maps feature index i to the time
(i * feat_stride + 0.5 * num_frames) / fps (configs/thumos_i3d.yaml: feat_stride 4,
num_frames 16, 30 fps). OpenTAD (sming256/OpenTAD, opentad/datasets/transforms/loading.py,
`LoadFeats`) reads `.npy`, `.npz` (key `feats`) and `.pt` (a tensor), T x C, and maps index
i to (i * snippet_stride + offset_frames) / fps (features_i3d_pad.py: feature_stride 4,
offset_frames 8).
"""

import io

import numpy as np
import pytest
import torch

from lofipipe.data.feature_files import SnippetTiming, read_feature_array
from lofipipe.errors import VideoFailure

VALUES = np.arange(12, dtype=np.float32).reshape(4, 3)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _pt(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.npy", _npy(VALUES)),
        ("a.npy", _npy(VALUES.astype(np.float16))),
        ("a.npy", _npy(VALUES[None])),  # a batch of one
        ("a.npz", _npz(feats=VALUES)),  # OpenTAD's key
        ("a.npz", _npz(features=VALUES, other=np.zeros(2))),
        ("a.npz", _npz(arr_0=VALUES)),  # np.savez(file, array): its only array
        ("a.pt", _pt(torch.from_numpy(VALUES))),
        ("a.pt", _pt({"feats": torch.from_numpy(VALUES), "meta": 3})),
        ("a.pt", _pt({"x": torch.from_numpy(VALUES)})),
    ],
)
def test_every_published_way_reads_as_the_same_array(name, data):
    array = read_feature_array(data, name)
    assert array.dtype == np.float32 and np.array_equal(array, VALUES)


@pytest.mark.parametrize(
    ("name", "data", "line"),
    [
        ("a.npy", b"not an array", "unreadable: not a .npy file (it does not start as one)"),
        ("a.npy", b"", "unreadable: not a .npy file"),
        ("a.npy", _npy(VALUES)[:60], "unreadable: "),  # cut short
        ("a.npz", _npy(VALUES), "unreadable: not a .npz file"),
        ("a.npz", _npz(a=VALUES, b=VALUES), "the .npz holds ['a', 'b']: expected one array"),
        ("a.pt", _pt([1, 2]), "the .pt file holds a list, not a tensor"),
        ("a.pt", b"\x00" * 10, "unreadable"),
        ("a.npy", _npy(np.zeros(5, np.float32)), "bad_shape: shape (5,): expected (T, C)"),
        ("a.npy", _npy(np.zeros((0, 4), np.float32)), "bad_shape: shape (0, 4)"),
        ("a.npy", _npy(np.array([[1.0, np.nan]])), "bad_values: 1 values are NaN or infinite"),
        ("a.npy", _npy(np.array([["a", "b"]])), "bad_values: dtype <U1"),
    ],
)
def test_a_bad_file_is_a_one_line_reason(name, data, line):
    with pytest.raises(VideoFailure) as caught:
        read_feature_array(data, name)
    assert line in caught.value.line and "\n" not in caught.value.line


def test_snippet_times_match_actionformer_and_opentad():
    # ActionFormer's THUMOS-14 i3d: 30 fps, feat_stride 4, num_frames 16.
    start, end = SnippetTiming(30.0, 4, 16).spans(1269)
    index = np.arange(1269)
    assert np.allclose((start + end) / 2, (index * 4 + 0.5 * 16) / 30)
    assert np.allclose(end - start, 16 / 30)
    # OpenTAD's offset_frames (8) is snippet 0's centre: offset = 8 - 16 / 2.
    start, end = SnippetTiming(30.0, 4, 16, offset=8 - 16 / 2).spans(10)
    assert np.allclose((start + end) / 2, (np.arange(10) * 4 + 8) / 30)
    start, _ = SnippetTiming(30.0, 4, 16, offset=6).spans(2)
    assert np.allclose(start, [6 / 30, 10 / 30])


def test_the_length_must_fit_the_duration():
    timing = SnippetTiming(30.0, 4, 16)
    # ActionFormer issue #5: video_validation_0000051, 169.79 s (5094 frames at 30 fps),
    # has 1269 features, (5094 - 16) / 4.
    assert timing.misfit(1269, 169.79) is None
    assert timing.misfit(1271, 169.79) is None  # ends less than one stride past the end
    too_long = timing.misfit(1272, 169.79)
    assert too_long is not None and too_long.reason == "too_long"
    assert "1272 snippets end at 170.00 s, more than one stride (0.133 s)" in too_long.message
    assert timing.misfit(1143, 169.79) is None  # 90% of the duration, less one stride
    too_short = timing.misfit(1100, 169.79)
    assert too_short is not None and too_short.reason == "too_short"
    assert "covering less than 90% of the video's 169.79 s" in too_short.message


def test_channel_first_arrays_are_turned_only_when_unambiguous():
    timing = SnippetTiming(10.0, 4, 8)  # a 10 s video: 24 snippets
    rows = np.random.default_rng(0).normal(size=(24, 6)).astype(np.float32)
    assert timing.orient(rows, 10.0, channel_first=True) is rows
    assert np.array_equal(timing.orient(rows.T, 10.0, channel_first=True), rows)
    with pytest.raises(VideoFailure, match=r"its second axis would fit; a \(C, T\) file"):
        timing.orient(rows.T, 10.0, channel_first=False)
    square = np.zeros((24, 23), np.float32)  # either axis could be time
    assert timing.orient(square, 10.0, channel_first=False) is square
    with pytest.raises(VideoFailure) as caught:
        timing.orient(square, 10.0, channel_first=True)
    assert caught.value.reason == "ambiguous_axes"
    with pytest.raises(VideoFailure, match="too_long|snippets end"):
        timing.orient(np.zeros((60, 6), np.float32), 10.0, channel_first=True)
