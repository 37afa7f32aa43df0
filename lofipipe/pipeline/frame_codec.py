"""How snippet frames are stored in shards: `jpeg` (compact) or `raw` (no decode cost)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

ENCODINGS = ("jpeg", "raw")


def encode_frame(frame: np.ndarray, encoding: str, jpeg_quality: int = 90) -> bytes:
    """Encodes one RGB frame (S, S, 3) uint8."""
    if encoding == "raw":
        return np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
    if encoding == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=jpeg_quality)
        return buffer.getvalue()
    raise ValueError(f"unknown frame encoding {encoding!r} (known: {', '.join(ENCODINGS)})")


def decode_frame(data: bytes, encoding: str, size: int) -> np.ndarray:
    """Decodes one frame back to RGB (size, size, 3) uint8."""
    if encoding == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(size, size, 3)
    if encoding == "jpeg":
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    raise ValueError(f"unknown frame encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
