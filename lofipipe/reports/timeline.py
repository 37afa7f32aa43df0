"""Actions on a time axis: per video, rows of coloured bars (the ground truth, the top
predictions) with their scores written beside them, and a class legend. Plain inline
SVG in a self-contained, script-free page."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

# Colour-blind-safe (Okabe-Ito), then more: a class keeps its colour on the whole page.
PALETTE = (
    *("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"),
    *("#000000", "#7F3C8D", "#11A579", "#3969AC", "#F2B701", "#E73F74", "#80BA5A"),
)
_WIDTH, _LABEL, _LANE, _AXIS = 900, 110, 16, 24  # pixels
_SCORE = 30  # pixels a score written after its bar takes


@dataclass(frozen=True)
class Bar:
    label: str
    start: float
    end: float
    score: float | None = None  # predictions: written beside the bar


@dataclass(frozen=True)
class VideoTimeline:
    video_id: str
    duration: float
    rows: Sequence[tuple[str, Sequence[Bar]]]  # (row name, bars), e.g. ground truth, top 10


def class_colors(labels: Sequence[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def _lanes(bars: Sequence[Bar], scale: float) -> list[int]:
    """A lane per bar so that no two bars (with the score written after one) overlap:
    each takes the first lane free at its start, in order of start."""
    ends: list[float] = []  # per lane, where its last bar (and score) ends, in pixels
    lanes = [0] * len(bars)
    for index in sorted(range(len(bars)), key=lambda i: bars[i].start):
        bar = bars[index]
        left = bar.start * scale
        right = max(bar.end * scale, left + 1) + (_SCORE if bar.score is not None else 2)
        lane = next((n for n, end in enumerate(ends) if end <= left), len(ends))
        if lane == len(ends):
            ends.append(right)
        ends[lane] = right
        lanes[index] = lane
    return lanes


def timeline_svg(video: VideoTimeline, colors: dict[str, str]) -> str:
    """One video's rows of bars on a shared axis in seconds; bars of a row that overlap
    in time go to lanes below one another."""
    span = max(video.duration, 1e-6)
    scale = (_WIDTH - _LABEL - 10) / span
    layout = [(name, bars, _lanes(bars, scale)) for name, bars in video.rows]
    heights = [_LANE * (max(lanes, default=0) + 1) + 6 for _, _, lanes in layout]
    height = sum(heights) + _AXIS
    parts = [
        f'<svg class="timeline" width="{_WIDTH}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{html.escape(video.video_id)}">'
    ]
    top = 0
    for (name, bars, lanes), row_height in zip(layout, heights, strict=True):
        parts.append(
            f'<text x="0" y="{top + 14}" font-size="12">{html.escape(name)}</text>'
            f'<line x1="{_LABEL}" y1="{top + row_height - 2}" x2="{_WIDTH - 10}" '
            f'y2="{top + row_height - 2}" stroke="#ddd"/>'
        )
        for bar, lane in zip(bars, lanes, strict=True):
            x = _LABEL + max(0.0, bar.start) * scale
            y = top + 2 + lane * _LANE
            width = max(1.0, (min(bar.end, span) - max(0.0, bar.start)) * scale)
            title = f"{bar.label} {bar.start:.1f}-{bar.end:.1f} s" + (
                f", score {bar.score:.2f}" if bar.score is not None else ""
            )
            parts.append(
                f'<rect class="bar" data-label="{html.escape(bar.label)}" x="{x:.1f}" '
                f'y="{y}" width="{width:.1f}" height="{_LANE - 4}" '
                f'fill="{colors.get(bar.label, "#888")}" opacity="0.85">'
                f"<title>{html.escape(title)}</title></rect>"
            )
            if bar.score is not None:
                parts.append(
                    f'<text class="score" x="{x + width + 2:.1f}" y="{y + _LANE - 6}" '
                    f'font-size="10">{bar.score:.2f}</text>'
                )
        top += row_height
    step = _axis_step(span)
    ticks = [step * i for i in range(int(span // step) + 1)]
    parts.append(f'<line x1="{_LABEL}" y1="{top}" x2="{_WIDTH - 10}" y2="{top}" stroke="#999"/>')
    for tick in ticks:
        x = _LABEL + tick * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + 4}" stroke="#999"/>'
            f'<text x="{x:.1f}" y="{top + 16}" font-size="10" text-anchor="middle">'
            f"{tick:g} s</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _axis_step(span: float) -> float:
    """A round tick spacing giving at most about 10 ticks."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if span / step <= 10:
            return float(step)
    return 7200.0


def legend(colors: dict[str, str]) -> str:
    items = "".join(
        f'<span class="legend-item"><span class="swatch" style="background:{color}"></span>'
        f"{html.escape(label)}</span>"
        for label, color in colors.items()
    )
    return f'<p class="legend">{items}</p>'


STYLE = (
    ".timeline{display:block;margin:4px 0 16px}"
    ".legend-item{margin-right:14px;white-space:nowrap}"
    ".swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}"
)


def timelines_html(videos: Sequence[VideoTimeline], labels: Sequence[str]) -> str:
    """The legend and each video's timeline under its name (a page's body part)."""
    colors = class_colors(labels)
    blocks = [legend(colors)]
    for video in videos:
        blocks.append(
            f'<h3 id="{html.escape(video.video_id)}">{html.escape(video.video_id)} '
            f"<small>({video.duration:.1f} s)</small></h3>{timeline_svg(video, colors)}"
        )
    return "\n".join(blocks)
