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
from PIL import Image

ENCODINGS = ("raw", "jpeg")


def encode_frame(frame: np.ndarray, encoding: str, jpeg_quality: int = 90) -> bytes:
    """Encodes one RGB frame given as (S, S, 3) uint8."""
    if encoding == "raw":
        return np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.uint8).tobytes()
    if encoding == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=jpeg_quality)
        return buffer.getvalue()
    raise ValueError(f"unknown frame encoding {encoding!r} (known: {', '.join(ENCODINGS)})")


def decode_frames(encoded: Sequence[bytes], encoding: str, size: int) -> np.ndarray:
    """Decodes frames back to one (N, 3, size, size) uint8 array."""
    if encoding == "raw":
        return np.frombuffer(b"".join(encoded), np.uint8).reshape(-1, 3, size, size)
    if encoding == "jpeg":
        out = np.empty((len(encoded), 3, size, size), np.uint8)
        for index, data in enumerate(encoded):
            with Image.open(io.BytesIO(data)) as image:
                out[index] = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        return out
    raise ValueError(f"unknown frame encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
