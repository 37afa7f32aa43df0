"""A contact sheet of snippets: what the model will see, for a person to look at."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from lofipipe.data.snippets import VideoSnippets

_MIN_TILE = 64  # small fidelities are enlarged to at least this many pixels per frame
_CAPTION = 14
_ACTION = (230, 60, 40)


def contact_sheet(video: VideoSnippets, label_names: list[str], rows: int = 12) -> Image.Image:
    """One row per snippet (up to `rows`, evenly spread), one column per frame; snippets
    inside an annotated action get a red caption naming it."""
    count, frames, _, size, _ = video.frames.shape
    chosen = np.unique(np.linspace(0, count - 1, min(rows, count)).round().astype(int))
    tile = max(size, _MIN_TILE)
    sheet = Image.new("RGB", (frames * tile, len(chosen) * (tile + _CAPTION)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for row, index in enumerate(chosen):
        top = row * (tile + _CAPTION)
        for column in range(frames):
            image = video.frames[index, column].permute(1, 2, 0).numpy()
            picture = Image.fromarray(image).resize((tile, tile), Image.NEAREST)
            sheet.paste(picture, (column * tile, top + _CAPTION))
        center = video.center[index]
        inside = [
            label_names[label]
            for (start, end), label in zip(video.segments, video.labels, strict=True)
            if start <= center < end
        ]
        caption = f"#{index} {video.start[index]:.2f}-{video.end[index]:.2f}s"
        if inside:
            caption += "  " + ", ".join(inside)
        draw.text((2, top + 1), caption, fill=_ACTION if inside else (220, 220, 220))
    return sheet
