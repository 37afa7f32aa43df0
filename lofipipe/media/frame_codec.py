"""How snippet frames are stored in shards.

`raw` stores each frame as planar RGB (3, S, S) bytes: reading is a copy, and the reader's
[L, F, 3, S, S] tensor comes out of one buffer. `jpeg` is several times smaller but costs
a decode per frame. bench/materialize_bench.py measures both; raw is the default because
only it reads back at least 10x faster than decoding the source videos.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

ENCODINGS = ("raw", "jpeg")


def frames_column(
    snippets: Sequence[np.ndarray], encoding: str, jpeg_quality: int = 90
) -> pa.ListArray:
    """The `frames` column of a batch of snippets, each given as (F, S, S, 3) uint8.

    Raw frames are transposed once into one buffer that the column then wraps as it is.
    """
    counts = np.array([len(snippet) for snippet in snippets])
    starts = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    if encoding == "raw":
        size = snippets[0].shape[1]
        buffer = np.empty((int(counts.sum()), 3, size, size), np.uint8)
        at = 0
        for snippet in snippets:
            buffer[at : at + len(snippet)] = snippet.transpose(0, 3, 1, 2)
            at += len(snippet)
        offsets = np.arange(len(buffer) + 1, dtype=np.int32) * (3 * size * size)
        values = pa.Array.from_buffers(
            pa.binary(), len(buffer), [None, pa.py_buffer(offsets), pa.py_buffer(buffer)]
        )
    elif encoding == "jpeg":
        values = pa.array(
            [_jpeg(frame, jpeg_quality) for snippet in snippets for frame in snippet], pa.binary()
        )
    else:
        raise ValueError(f"unknown frame encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    return pa.ListArray.from_arrays(starts, values)


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_jpeg_frames(encoded: Sequence[bytes], size: int) -> np.ndarray:
    """Decodes JPEG frames to one (N, 3, size, size) uint8 array (raw frames need no
    decoding: the reader copies them straight out of the column's buffer)."""
    out = np.empty((len(encoded), 3, size, size), np.uint8)
    for index, data in enumerate(encoded):
        with Image.open(io.BytesIO(data)) as image:
            out[index] = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    return out
