"""Bilinear resampling of 8-bit image planes, compiled (numba), computing only the output
pixels asked for.

The filter is the one every preprocessing preset names: half-pixel centres, no
anti-aliasing, as `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`
and OpenCV's INTER_LINEAR place their samples. Each output pixel blends the two source
rows around it, then the two columns, in float32, and is rounded to the nearest level:
within half a level of the exact result. One 224 x 224 frame with its chroma from 640 x
360 takes about 0.09 ms, where numpy's gathers took 0.34 ms, and the kernel releases the
GIL.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

Taps = tuple[np.ndarray, np.ndarray, np.ndarray]


@functools.lru_cache(maxsize=256)
def taps(length: int, scale: float, first: float, count: int, stored: int) -> Taps:
    """Bilinear taps along one axis with half-pixel centres, as `interpolate` places them:
    output k (of `stored`, those past `count` repeating the last) samples the source at
    (first + k + 0.5) * scale - 0.5, clamped to the plane. Returns the two source indices
    and the weight of the second."""
    at = (first + np.minimum(np.arange(stored), count - 1) + 0.5) * scale - 0.5
    at = np.clip(at, 0, length - 1)
    low = np.floor(at)
    high = np.minimum(low + 1, length - 1)
    return low.astype(np.uintp), high.astype(np.uintp), (at - low).astype(np.float32)


def resample(plane: np.ndarray, rows: Taps, columns: Taps, out: np.ndarray) -> None:
    """Writes into `out` (len(rows[0]), len(columns[0])) uint8 the (H, W) uint8 `plane`
    (any strides: a rotated view is read as it is) sampled at the given taps."""
    _bilinear(plane, *rows, *columns, out)


@numba.njit(cache=True, nogil=True)
def _bilinear(  # pragma: no cover (compiled)
    plane: np.ndarray,
    top: np.ndarray,
    bottom: np.ndarray,
    down: np.ndarray,
    near: np.ndarray,
    far: np.ndarray,
    right: np.ndarray,
    out: np.ndarray,
) -> None:
    # Rows first, over the span of columns the taps read (a plain loop over row slices,
    # which LLVM vectorises), then the columns gathered from that float32 line. Indices
    # are unsigned throughout: no negative-index checks, and no mixing with signed ones
    # (numba makes uint64 + int64 a float).
    half = np.float32(0.5)
    first, last = near.min(), far.max() + np.uintp(1)
    line = np.empty(last - first, np.float32)
    for i in range(out.shape[0]):
        upper, lower, weight = plane[top[i], first:last], plane[bottom[i], first:last], down[i]
        for x in range(line.shape[0]):
            value = np.float32(upper[x])
            line[x] = value + (np.float32(lower[x]) - value) * weight
        for j in range(out.shape[1]):
            value = line[near[j] - first]
            out[i, j] = np.uint8(value + (line[far[j] - first] - value) * right[j] + half)
