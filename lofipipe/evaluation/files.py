"""Ground truth and predictions for evaluation, read as published: ActivityNet-1.3 JSON,
THUMOS-14 per-class text files, lofipipe's annotations.parquet, and ActivityNet-format
prediction files (`results` -> video -> [{segment, label, score}])."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lofipipe.data.annotation_files import finite_number, json_mapping, read_annotations
from lofipipe.errors import InputError
from lofipipe.evaluation.detection import Segment
from lofipipe.schemas.tables import ANNOTATIONS
from lofipipe.storage import Store


def _split(url: str) -> tuple[str, str]:
    parent, _, name = url.rstrip("/").rpartition("/")
    return parent or ".", name


def read_ground_truth(
    url: str, options: Mapping[str, Any], subset: str | None = None
) -> tuple[list[Segment], set[str]]:
    """The annotated segments (of `subset`, if given) and every video of that subset,
    annotated or not (keys as the file writes them)."""
    if url.endswith(".parquet"):
        parent, name = _split(url)
        store = Store(parent, options)
        if not store.exists(name):
            raise InputError(f"ground truth not found: {url}")
        rows = ANNOTATIONS.check(store.read_table(name), url).to_pylist()
        rows = [r for r in rows if subset is None or r["subset"] == subset]
        return (
            [Segment(r["video_id"], r["label"], r["start"], r["end"]) for r in rows],
            {r["video_id"] for r in rows},
        )
    raw = read_annotations(url, options)
    videos = {key for key, video in raw.videos.items() if subset is None or video.subset == subset}
    if subset is not None and not videos:
        found = sorted({video.subset for video in raw.videos.values() if video.subset})
        raise InputError(
            f"{url}: no videos of subset {subset!r} (subsets there: {', '.join(found) or 'none'})"
        )
    return [
        Segment(s.key, s.label, s.start, s.end) for s in raw.segments if s.key in videos
    ], videos


def parse_predictions(text: str, name: str) -> list[Segment]:
    """Predictions in ActivityNet result format, in file order."""
    out = []
    for video_id, entries in json_mapping(text, name, "results").items():
        if not isinstance(entries, list):
            raise InputError(f"{name}: results[{video_id!r}]: expected a list")
        for index, entry in enumerate(entries):
            where = f"{name}: results[{video_id!r}][{index}]"
            segment = entry.get("segment") if isinstance(entry, Mapping) else None
            if not isinstance(segment, (list, tuple)) or len(segment) != 2:
                raise InputError(f"{where}: expected {{'segment': [start, end], 'label', 'score'}}")
            if "label" not in entry:
                raise InputError(f"{where}: no 'label'")
            out.append(
                Segment(
                    str(video_id),
                    str(entry["label"]),
                    finite_number(segment[0], f"{where}.segment", "start"),
                    finite_number(segment[1], f"{where}.segment", "end"),
                    finite_number(entry.get("score"), where, "score"),
                )
            )
    return out


def read_predictions(url: str, options: Mapping[str, Any]) -> list[Segment]:
    parent, name = _split(url)
    store = Store(parent, options)
    if not store.exists(name):
        raise InputError(f"predictions not found: {url}")
    try:
        return parse_predictions(store.read_text(name), name)
    except UnicodeDecodeError:
        raise InputError(f"{name}: not UTF-8 text") from None


def match_video_ids(predictions: list[Segment], videos: set[str]) -> list[Segment]:
    """Predictions keyed as the ground truth keys its videos: ActivityNet's files drop the
    `v_` that its video file names (and so lofipipe's video ids) carry."""
    out = []
    for p in predictions:
        if p.video_id not in videos and p.video_id.startswith("v_") and p.video_id[2:] in videos:
            p = Segment(p.video_id[2:], p.label, p.start, p.end, p.score)
        out.append(p)
    return out
