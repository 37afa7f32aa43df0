"""Annotations: read the files TAL datasets and codebases publish, and normalize them.

Read as published:
    ActivityNet-1.3 JSON   `database` -> video -> {subset, duration, annotations: [{segment,
                           label}]}, with `version`, `taxonomy`, `url`, `resolution`; files
                           in this layout for other datasets (THUMOS-14) are
                           "ActivityNet-style JSON"
    ActionFormer JSON      the same layout with `fps` per video and `label_id` and
                           `segment(frames)` per annotation (thumos14.json, anet1.3_*.json,
                           epic_kitchens_*.json of happyharrycn/actionformer_release)
    OpenTAD JSON           the same layout with `frame` (frame count) per video or
                           `label_name` per annotation (sming256/OpenTAD's
                           thumos_14_anno.json, epic_kitchens_*.json, ego4d_*.json)
    THUMOS-14 text files   `<Class>_<val|test>.txt`, one `<video> <start> <end>` a line

Numbers may be JSON numbers or text ("18.6"), as the official ActivityNet code reads both.
Subset names are made consistent (`canonical_subset`): case aside, train and training,
val and validation, test and testing each name one subset. THUMOS-14's `Ambiguous` spans
are not actions in any format: evaluation ignores them, so they are left out.

Malformed files are an `InputError` naming the file and the place in it. Well-formed
entries that do not fit the videos (unknown video, label outside the file's taxonomy,
reversed segment, segment outside the video) are reported as issues, one per entry, and
left out or clipped; they never stop the job.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lofipipe.data.video_ids import annotation_key_to_video_id
from lofipipe.errors import InputError, NotFoundError
from lofipipe.storage import Store, list_files

_THUMOS_NAME = re.compile(r"^(?P<label>.+)_(?P<subset>val|test)\.txt$")
# THUMOS-14 marks unclear spans in Ambiguous_<subset>.txt (OpenTAD's JSON keeps them as
# the label "Ambiguous"); evaluation ignores them.
_THUMOS_IGNORED_LABELS = {"Ambiguous"}
# The names lofipipe keeps: the official ActivityNet ones for training and validation, and
# "test" as THUMOS-14 (and the `thumos-head` recipe) has always had it.
_SUBSET_ALIASES = {"train": "training", "val": "validation", "testing": "test"}


@dataclass(frozen=True)
class RawSegment:
    key: str  # the video key as written in the annotation file
    label: str
    start: float
    end: float
    where: str  # file and position, for messages


@dataclass(frozen=True)
class RawVideo:
    subset: str | None  # canonical_subset of the file's subset
    duration: float | None


@dataclass(frozen=True)
class RawAnnotations:
    source_format: str  # activitynet | actionformer | opentad | thumos14 (the table's column)
    format: str  # what was read, for people: "ActionFormer JSON (thumos14.json)"
    videos: dict[str, RawVideo]
    segments: tuple[RawSegment, ...]
    labels: frozenset[str] | None = None  # the file's own label list (ANet taxonomy), if any
    # label id -> label as the file numbers them (ActionFormer's `label_id`), so that
    # predictions that give ids can be named
    label_ids: dict[int, str] = field(default_factory=dict)


def canonical_subset(subset: str) -> str:
    """The subset name lofipipe keeps for a name as a file writes it: lower case, with
    train/val/testing spelled training/validation/test."""
    name = subset.strip().lower()
    return _SUBSET_ALIASES.get(name, name)


def finite_number(value: Any, where: str, what: str) -> float:
    """`value` as a float, or an `InputError` at `where` if it is not a finite number.

    Text that spells a number counts: published files write `"segment": ["18.6", "24.8"]`.
    """
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if (
        isinstance(number, bool)
        or not isinstance(number, (int, float))
        or not math.isfinite(number)
    ):
        raise InputError(f"{where}: {what} must be a finite number, got {value!r}")
    return float(number)


def label_id(value: Any, where: str) -> int:
    """An integer label id (a JSON integer, or text that spells one), or an `InputError`."""
    if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: expected an integer label id, got {value!r}")
    return value


def load_json(text: str, name: str) -> Any:
    """The JSON document in `text`, or an `InputError` naming the file."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{name}: not valid JSON (line {error.lineno}: {error.msg})") from None


def json_mapping(document: Any, name: str, key: str) -> Mapping[str, Any]:
    """The mapping under `key` of a JSON document (ActivityNet's `database` of videos, or
    `results` of a prediction file), or an `InputError` naming the file."""
    if not isinstance(document, Mapping) or not isinstance(document.get(key), Mapping):
        raise InputError(f"{name}: expected an object with a '{key}' mapping of videos")
    return document[key]


def _taxonomy(document: Mapping[str, Any], name: str) -> frozenset[str] | None:
    """ActivityNet's `taxonomy` node names, when the file has one."""
    nodes = document.get("taxonomy")
    if nodes is None:
        return None
    if not isinstance(nodes, list) or not all(
        isinstance(node, Mapping) and isinstance(node.get("nodeName"), str) for node in nodes
    ):
        raise InputError(f"{name}: taxonomy: expected a list of objects with a 'nodeName'")
    return frozenset(node["nodeName"] for node in nodes)


def _json_kind(document: Mapping[str, Any], database: Mapping[str, Any]) -> tuple[str, str]:
    """(source_format, name) of an ActivityNet-style file, told apart by the keys that only
    one codebase writes."""
    videos = [video for video in database.values() if isinstance(video, Mapping)]
    annotations = [
        annotation
        for video in videos
        if isinstance(video.get("annotations"), list)
        for annotation in video["annotations"]
        if isinstance(annotation, Mapping)
    ]
    if any("fps" in video for video in videos) or any(
        "label_id" in a or "segment(frames)" in a for a in annotations
    ):
        return "actionformer", "ActionFormer JSON"
    if any("frame" in video for video in videos) or any("label_name" in a for a in annotations):
        return "opentad", "OpenTAD JSON"
    if "taxonomy" in document or str(document.get("version", "")).startswith("VERSION 1.3"):
        return "activitynet", "ActivityNet-1.3 JSON"
    return "activitynet", "ActivityNet-style JSON"


def parse_activitynet(text: str, name: str) -> RawAnnotations:
    """Parses an ActivityNet-style document (`database` -> video -> annotations): the
    ActivityNet-1.3 file with its optional `taxonomy`, and ActionFormer's and OpenTAD's
    files, whose `label_id`s it keeps."""
    document = load_json(text, name)
    database = json_mapping(document, name, "database")
    source_format, kind = _json_kind(document, database)
    videos, segments = {}, []
    label_ids: dict[int, str] = {}
    label_id_at: dict[int, str] = {}
    for key, entry in database.items():
        where = f"{name}: database[{key!r}]"
        if not isinstance(entry, Mapping):
            raise InputError(f"{where}: expected an object, got {type(entry).__name__}")
        subset = entry.get("subset")
        if subset is not None and not isinstance(subset, str):
            raise InputError(f"{where}.subset: expected a string, got {subset!r}")
        duration = entry.get("duration")
        if duration is not None:
            duration = finite_number(duration, f"{where}.duration", "duration")
        videos[key] = RawVideo(canonical_subset(subset) if subset else None, duration)
        annotations = entry.get("annotations", [])
        if not isinstance(annotations, list):
            raise InputError(f"{where}.annotations: expected a list")
        for index, annotation in enumerate(annotations):
            at = f"{where}.annotations[{index}]"
            if not isinstance(annotation, Mapping):
                raise InputError(f"{at}: expected an object with 'segment' and 'label'")
            segment, label = annotation.get("segment"), annotation.get("label")
            if not isinstance(segment, (list, tuple)) or len(segment) != 2:
                raise InputError(f"{at}.segment: expected [start, end] in seconds, got {segment!r}")
            if not isinstance(label, str) or not label.strip():
                raise InputError(f"{at}.label: expected a non-empty string, got {label!r}")
            label = label.strip()
            start = finite_number(segment[0], f"{at}.segment", "start")
            end = finite_number(segment[1], f"{at}.segment", "end")
            if label in _THUMOS_IGNORED_LABELS:
                continue
            if annotation.get("label_id") is not None:
                number = label_id(annotation["label_id"], f"{at}.label_id")
                if label_ids.setdefault(number, label) != label:
                    raise InputError(
                        f"{at}.label_id: {number} names {label!r} here and "
                        f"{label_ids[number]!r} at {label_id_at[number]}"
                    )
                label_id_at.setdefault(number, at)
            segments.append(RawSegment(key, label, start, end, at))
    return RawAnnotations(
        source_format,
        f"{kind} ({name})",
        videos,
        tuple(segments),
        _taxonomy(document, name),
        label_ids,
    )


def parse_thumos(files: Iterable[tuple[str, str]]) -> RawAnnotations:
    """Parses THUMOS-14 `<Class>_<val|test>.txt` files given as (name, text) pairs."""
    videos: dict[str, RawVideo] = {}
    segments = []
    count = 0
    for name, text in files:
        count += 1
        match = _THUMOS_NAME.match(name.rsplit("/", 1)[-1])
        if not match:
            raise InputError(
                f"{name}: expected a THUMOS-14 file named <Class>_val.txt or <Class>_test.txt"
            )
        label, subset = match["label"], canonical_subset(match["subset"])
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            at = f"{name} line {number}"
            parts = line.split()
            try:
                key, start, end = parts[0], float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                raise InputError(
                    f"{at}: expected '<video> <start> <end>', got {line.strip()!r}"
                ) from None
            if len(parts) != 3 or not (math.isfinite(start) and math.isfinite(end)):
                raise InputError(f"{at}: expected '<video> <start> <end>', got {line.strip()!r}")
            videos.setdefault(key, RawVideo(subset, None))
            if label not in _THUMOS_IGNORED_LABELS:
                segments.append(RawSegment(key, label, start, end, at))
    files_read = f"{count} file" + ("s" if count != 1 else "")
    return RawAnnotations(
        "thumos14", f"THUMOS-14 per-class text files ({files_read})", videos, tuple(segments)
    )


def read_annotations(url: str, options: Mapping[str, Any]) -> RawAnnotations:
    """Reads annotations from a JSON file (ActivityNet-1.3, ActionFormer, OpenTAD), or
    THUMOS-14 text files (a folder, a glob or one file).

    Raises:
        InputError: nothing there, or a malformed file.
        StorageError: the storage could not be read.
    """
    if url.lower().endswith(".json"):
        parent, _, name = url.rstrip("/").rpartition("/")
        store = Store(parent or ".", options)
        try:
            text = store.read_text(name)
        except FileNotFoundError:
            raise InputError(f"annotation file not found: {url}") from None
        except UnicodeDecodeError:
            raise InputError(f"{name}: not UTF-8 text") from None
        return parse_activitynet(text, name)
    try:
        found = list_files(url, options, ["txt"])
    except NotFoundError:
        found = []
    if not found:
        raise InputError(
            f"no annotations at {url}: expected a .json file (ActivityNet-1.3, ActionFormer, "
            f"OpenTAD) or THUMOS-14 <Class>_<subset>.txt files"
        )
    texts = []
    for file_url, _ in found:
        parent, _, name = file_url.rpartition("/")
        try:
            texts.append((name, Store(parent, options).read_text(name)))
        except UnicodeDecodeError:
            raise InputError(f"{name}: not UTF-8 text") from None
    return parse_thumos(texts)


@dataclass(frozen=True)
class NormalizedAnnotations:
    rows: list[dict[str, Any]]  # ANNOTATIONS rows, sorted by video, start, label
    subsets: dict[str, str]  # video_id -> subset
    issues: list[dict[str, Any]]  # ERRORS rows (stage "annotations")


def normalize(raw: RawAnnotations, durations: Mapping[str, float | None]) -> NormalizedAnnotations:
    """Matches annotations to the listed videos and checks every segment against them.

    Args:
        raw: parsed annotations.
        durations: video_id -> probed duration (None when the video failed to probe).
    """
    known = set(durations)
    issues: list[dict[str, Any]] = []

    def issue(reason: str, message: str, video_id: str | None = None) -> None:
        issues.append(
            {
                "stage": "annotations",
                "video_id": video_id,
                "reason": reason,
                "error": message,
                "attempts": 1,
            }
        )

    ids: dict[str, str] = {}
    for key in raw.videos:
        video_id = annotation_key_to_video_id(key, known)
        if video_id is None:
            issue(
                "unknown_video",
                f"annotations for video {key!r}, which is not among the listed videos; left out",
            )
        else:
            ids[key] = video_id
    subsets = {
        ids[key]: video.subset for key, video in raw.videos.items() if key in ids and video.subset
    }
    rows: list[dict[str, Any]] = []
    for segment in raw.segments:
        video_id = ids.get(segment.key)
        if video_id is None:
            continue
        duration = durations.get(video_id) or raw.videos[segment.key].duration
        start, end = segment.start, segment.end
        span = f"[{start:g}, {end:g}]"
        if raw.labels is not None and segment.label not in raw.labels:
            issue(
                "unknown_label",
                f"{segment.where}: label {segment.label!r} is not in the file's taxonomy; left out",
                video_id,
            )
            continue
        if end <= start:
            issue(
                "reversed_segment",
                f"{segment.where}: segment {span} ends before it starts; left out",
                video_id,
            )
            continue
        if duration is not None:
            if end <= 0 or start >= duration:
                issue(
                    "outside_video",
                    f"{segment.where}: segment {span} lies outside the "
                    f"video (0 to {duration:g} s); left out",
                    video_id,
                )
                continue
            if start < 0 or end > duration:
                start, end = max(start, 0.0), min(end, duration)
                issue(
                    "clipped_segment",
                    f"{segment.where}: segment {span} reaches past the "
                    f"video (0 to {duration:g} s); clipped to "
                    f"[{start:g}, {end:g}]",
                    video_id,
                )
        rows.append(
            {
                "video_id": video_id,
                "subset": subsets.get(video_id),
                "label": segment.label,
                "start": start,
                "end": end,
                "video_duration": duration,
                "source_format": raw.source_format,
            }
        )
    # Label ids from the segments kept: an entry left out never shifts the others' ids.
    label_ids = {label: index for index, label in enumerate(sorted({r["label"] for r in rows}))}
    for row in rows:
        row["label_id"] = label_ids[row["label"]]
    rows.sort(key=lambda row: (row["video_id"], row["start"], row["end"], row["label"]))
    return NormalizedAnnotations(rows, subsets, issues)
