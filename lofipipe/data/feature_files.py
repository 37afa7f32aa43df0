"""Per-video feature files as other tools publish them, and the times of their snippets.

A file holds one video's features, named `<video_id>.<ext>`:

- `.npy`: one array (ActionFormer's `np.load(...)`; OpenTAD's `feat_format="npy"`);
- `.npz`: the array under `feats` (OpenTAD's `feat_format="npz"`) or `features`, or the
  only array it holds;
- `.pt`: a tensor (OpenTAD's `feat_format="pt"`), or a dict holding one tensor (or one
  under `feats` or `features`), read with `torch.load(weights_only=True)`.

The array is (T, C): a row per snippet (ActionFormer's loaders transpose it to C x T,
OpenTAD's `LoadFeats` assumes "the first dimension is T"). A leading axis of length 1
(a batch of one) is dropped. Snippet i spans [(offset + i * stride) / fps, + frames / fps)
seconds, so its centre is ActionFormer's `(i * feat_stride + 0.5 * num_frames) / fps`
when the offset is 0, and OpenTAD's `(i * snippet_stride + offset_frames) / fps` when
offset = offset_frames - frames / 2.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from lofipipe.errors import VideoFailure, one_line

FEATURE_EXTENSIONS = ("npy", "npz", "pt")
_ARRAY_KEYS = ("feats", "features")  # OpenTAD's .npz key first
_MAGIC = {"npy": b"\x93NUMPY", "npz": b"PK"}  # the NumPy format's header; a zip archive


def extension_of(name: str) -> str:
    """`npy` of `a/b.NPY`; empty when the name has none."""
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base.lstrip(".") else ""


def _one_array(arrays: Mapping[str, object], what: str) -> object:
    """The array under `feats` or `features`, or the only one."""
    for key in _ARRAY_KEYS:
        if key in arrays:
            return arrays[key]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise VideoFailure(
        "unreadable",
        f"{what} holds {sorted(arrays) or 'nothing'}: expected one array, or one named "
        f"{' or '.join(_ARRAY_KEYS)}",
    )


def _from_pt(data: bytes) -> np.ndarray:
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping):
        tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        loaded = _one_array(tensors, "the .pt dict")
    if not isinstance(loaded, torch.Tensor):
        raise VideoFailure(
            "unreadable", f"the .pt file holds a {type(loaded).__name__}, not a tensor"
        )
    return loaded.detach().float().numpy()


def read_feature_array(data: bytes, name: str) -> np.ndarray:
    """The 2-D float32 array of a feature file's bytes (in the file's axis order).

    Raises:
        VideoFailure: `unreadable` (not such a file, or no single array in it),
            `bad_shape` (not 2-D, or empty), `bad_values` (not numbers, or NaN / inf).
    """
    kind = extension_of(name)
    magic = _MAGIC.get(kind)
    if magic and not data.startswith(magic):
        raise VideoFailure("unreadable", f"not a .{kind} file (it does not start as one)")
    try:
        if kind == "npy":
            array = np.load(io.BytesIO(data), allow_pickle=False)
        elif kind == "npz":
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                array = np.asarray(_one_array({k: archive[k] for k in archive.files}, "the .npz"))
        elif kind == "pt":
            array = _from_pt(data)
        else:
            raise VideoFailure("unreadable", f"not a .{', .'.join(FEATURE_EXTENSIONS)} file")
    except VideoFailure:
        raise
    except Exception as error:  # noqa: BLE001 - numpy, zipfile, pickle and torch each raise their own
        raise VideoFailure("unreadable", one_line(error, with_type=True)) from None
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or 0 in array.shape:
        raise VideoFailure("bad_shape", f"shape {tuple(array.shape)}: expected (T, C)")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise VideoFailure("bad_values", f"dtype {array.dtype}: expected numbers")
    array = array.astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise VideoFailure("bad_values", f"{bad} values are NaN or infinite")
    return array


@dataclass(frozen=True)
class SnippetTiming:
    """When the snippets of a feature file were sampled: a snippet of `frames` frames
    every `stride` frames at `fps`, the first `offset` frames after the video's start."""

    fps: float
    stride: int
    frames: int
    offset: float = 0.0
    min_coverage: float = 0.9

    def spans(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) in seconds of snippets 0 .. count - 1."""
        start = (self.offset + np.arange(count, dtype=np.float64) * self.stride) / self.fps
        return start, start + self.frames / self.fps

    def misfit(self, count: int, duration: float) -> VideoFailure | None:
        """Why `count` snippets do not fit a video of `duration` seconds, or None.

        They fit when the last one ends no later than one stride after the video's end
        (feature extractors pad the last clip) and no earlier than `min_coverage` of the
        duration less one stride (they drop a last clip that does not fill a snippet).
        """
        step = self.stride / self.fps
        end = float(self.spans(count)[1][-1])
        if end > duration + step + 1e-6:
            return VideoFailure(
                "too_long",
                f"{count} snippets end at {end:.2f} s, more than one stride ({step:.3g} s) "
                f"past the video's {duration:.2f} s",
            )
        if end < self.min_coverage * duration - step - 1e-6:
            return VideoFailure(
                "too_short",
                f"{count} snippets end at {end:.2f} s, covering less than "
                f"{self.min_coverage:.0%} of the video's {duration:.2f} s",
            )
        return None

    def orient(self, array: np.ndarray, duration: float, channel_first: bool) -> np.ndarray:
        """`array` as (T, C) for a video of `duration` seconds.

        Args:
            channel_first: a (C, T) array is accepted (and transposed) when only its
                second axis fits the video; when both fit, which is time is unknown.

        Raises:
            VideoFailure: the array's time axis does not fit the video, or (with
                `channel_first`) either axis could be time.
        """
        rows, columns = array.shape
        as_rows, as_columns = self.misfit(rows, duration), self.misfit(columns, duration)
        if as_rows is None and not (channel_first and as_columns is None):
            return array
        if as_rows is None:
            raise VideoFailure(
                "ambiguous_axes",
                f"shape {array.shape}: either axis fits the video's {duration:.2f} s, so "
                f"which one is time is unknown; save it as (T, C)",
            )
        if as_columns is None and channel_first:
            return np.ascontiguousarray(array.T)
        if as_columns is None:
            raise VideoFailure(
                as_rows.reason,
                f"{as_rows.message} (shape {array.shape}: its second axis would fit; a "
                f"(C, T) file? --format opentad reads those)",
            )
        raise as_rows
