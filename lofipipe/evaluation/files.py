"""Ground truth and predictions for evaluation, read as published, each with the name of
the format it was read as.

Ground truth: any annotation file `read_annotations` reads (ActivityNet-1.3, ActionFormer
and OpenTAD JSON, THUMOS-14 per-class text files), or lofipipe's annotations.parquet.

Predictions:
    ActivityNet result JSON     `results` -> video -> [{segment, label, score}]: what the
                                ActivityNet evaluation reads, OpenTAD writes
                                (result_detection.json) and lofipipe writes
                                (predictions.json); a `label` is a name or an integer id.
                                Proposals (ActivityNet's proposal task, what BMN writes)
                                have no `label`: read where labels are not needed
    ActionFormer results pickle what ActionFormer's `eval.py --saveonly` writes
                                (eval_results.pkl): a dict of parallel arrays `video-id`,
                                `t-start`, `t-end`, `label` (integer ids), `score`

Integer label ids are named by the ground truth's own ids (ActionFormer's `label_id`,
the `label_id` of annotations.parquet): `match_predictions`.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lofipipe.data.annotation_files import (
    canonical_subset,
    finite_number,
    json_mapping,
    load_json,
    read_annotations,
)
from lofipipe.errors import InputError, one_line
from lofipipe.evaluation.detection import Segment
from lofipipe.schemas.tables import ANNOTATIONS
from lofipipe.storage import Store

_PICKLE_SUFFIXES = (".pkl", ".pickle")
_ACTIONFORMER_COLUMNS = ("video-id", "t-start", "t-end", "label", "score")


@dataclass(frozen=True)
class GroundTruth:
    """Annotated segments of the videos evaluated, and the format they were read as."""

    segments: list[Segment]
    videos: set[str]  # every video of the subset, annotated or not, keyed as the file keys it
    format: str  # e.g. "ActionFormer JSON (thumos14.json)"
    label_ids: dict[int, str] = field(default_factory=dict)  # the file's label id -> label


@dataclass(frozen=True)
class Prediction:
    """One predicted segment as a file gives it: `label` is a name or an integer label id
    that only the ground truth can name."""

    video_id: str
    label: str | int
    start: float
    end: float
    score: float


NO_LABEL = ""  # the label of a proposal, read where labels are not needed


@dataclass(frozen=True)
class Predictions:
    """Predicted segments in file order, and the format they were read as."""

    segments: list[Prediction]
    format: str  # e.g. "ActionFormer results pickle (eval_results.pkl)"


def _split(url: str) -> tuple[str, str]:
    parent, _, name = url.rstrip("/").rpartition("/")
    return parent or ".", name


def read_ground_truth(
    url: str, options: Mapping[str, Any], subset: str | None = None
) -> GroundTruth:
    """The annotated segments (of `subset`, if given: any spelling `canonical_subset`
    takes, so `val` finds `Validation`) and every video of that subset."""
    wanted = canonical_subset(subset) if subset is not None else None
    if url.endswith(".parquet"):
        parent, name = _split(url)
        store = Store(parent, options)
        if not store.exists(name):
            raise InputError(f"ground truth not found: {url}")
        rows = ANNOTATIONS.check(store.read_table(name), url).to_pylist()
        label_ids = {r["label_id"]: r["label"] for r in rows}
        rows = [r for r in rows if wanted is None or canonical_subset(r["subset"] or "") == wanted]
        return GroundTruth(
            [Segment(r["video_id"], r["label"], r["start"], r["end"]) for r in rows],
            {r["video_id"] for r in rows},
            f"lofipipe annotations table ({name})",
            label_ids,
        )
    raw = read_annotations(url, options)
    videos = {key for key, video in raw.videos.items() if wanted is None or video.subset == wanted}
    if subset is not None and not videos:
        found = sorted({video.subset for video in raw.videos.values() if video.subset})
        raise InputError(
            f"{url}: no videos of subset {subset!r} (subsets there: {', '.join(found) or 'none'})"
        )
    return GroundTruth(
        [Segment(s.key, s.label, s.start, s.end) for s in raw.segments if s.key in videos],
        videos,
        raw.format,
        raw.label_ids,
    )


def _label(value: Any, where: str) -> str | int:
    """A prediction's label: a name, or an integer label id."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise InputError(f"{where}: label must be a name or an integer label id, got {value!r}")


def parse_result_json(text: str, name: str, need_labels: bool = True) -> list[Prediction]:
    """Predictions in ActivityNet result format, in file order; without `need_labels`, an
    entry without `label` (a proposal) is read with the label `NO_LABEL`."""
    out = []
    for video_id, entries in json_mapping(load_json(text, name), name, "results").items():
        if not isinstance(entries, list):
            raise InputError(f"{name}: results[{video_id!r}]: expected a list")
        for index, entry in enumerate(entries):
            where = f"{name}: results[{video_id!r}][{index}]"
            segment = entry.get("segment") if isinstance(entry, Mapping) else None
            if not isinstance(segment, (list, tuple)) or len(segment) != 2:
                raise InputError(f"{where}: expected {{'segment': [start, end], 'label', 'score'}}")
            if "label" not in entry and need_labels:
                raise InputError(f"{where}: no 'label'")
            out.append(
                Prediction(
                    str(video_id),
                    _label(entry["label"], f"{where}.label") if "label" in entry else NO_LABEL,
                    finite_number(segment[0], f"{where}.segment", "start"),
                    finite_number(segment[1], f"{where}.segment", "end"),
                    finite_number(entry.get("score"), where, "score"),
                )
            )
    return out


def parse_predictions(text: str, name: str) -> list[Segment]:
    """Predictions in ActivityNet result format with label names (as lofipipe writes
    them), in file order; a label id stays its decimal text."""
    return [
        Segment(p.video_id, str(p.label), p.start, p.end, p.score)
        for p in parse_result_json(text, name)
    ]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only containers, numbers, text and numpy arrays: a pickle names the
    functions it calls, and any other name could run code."""

    # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core: the same functions.
    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol 2 writes bytes, which arrays hold
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: only numpy arrays, lists, numbers and text "
                f"are read from a pickle"
            )
        return super().find_class(module, name)


def _column(results: Mapping[str, Any], key: str, name: str) -> list[Any]:
    values = results[key]
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise InputError(f"{name}: '{key}' must be one-dimensional, has shape {values.shape}")
        return values.tolist()
    if isinstance(values, (list, tuple)):
        return [v.item() if isinstance(v, np.generic) else v for v in values]
    raise InputError(f"{name}: '{key}' must be an array or a list, got {type(values).__name__}")


def parse_actionformer_pickle(data: bytes, name: str) -> list[Prediction]:
    """Predictions from ActionFormer's eval_results.pkl (`pickle.dump` of a dict of parallel
    arrays, see libs/utils/train_utils.py `valid_one_epoch`), in file order."""
    try:
        results = _ArrayUnpickler(io.BytesIO(data)).load()
    except Exception as error:  # noqa: BLE001 - damaged bytes fail in many ways; one line each
        raise InputError(
            f"{name}: not a readable ActionFormer results pickle ({one_line(error)})"
        ) from None
    if not isinstance(results, Mapping) or not all(k in results for k in _ACTIONFORMER_COLUMNS):
        raise InputError(
            f"{name}: expected ActionFormer's results, a dict of "
            f"{', '.join(repr(k) for k in _ACTIONFORMER_COLUMNS)}"
        )
    columns = [_column(results, key, name) for key in _ACTIONFORMER_COLUMNS]
    lengths = {key: len(values) for key, values in zip(_ACTIONFORMER_COLUMNS, columns, strict=True)}
    if len(set(lengths.values())) != 1:
        raise InputError(f"{name}: the arrays differ in length ({lengths})")
    out = []
    for index, (video_id, start, end, label, score) in enumerate(zip(*columns, strict=True)):
        where = f"{name}: row {index}"
        if not isinstance(video_id, str) or not video_id:
            raise InputError(f"{where}: video-id must be a name, got {video_id!r}")
        out.append(
            Prediction(
                video_id,
                _label(label, f"{where}.label"),
                finite_number(start, where, "t-start"),
                finite_number(end, where, "t-end"),
                finite_number(score, where, "score"),
            )
        )
    return out


def read_predictions(url: str, options: Mapping[str, Any], need_labels: bool = True) -> Predictions:
    """Reads an ActivityNet result JSON or an ActionFormer results pickle, told apart by
    the content (a pickle starts with its protocol byte, 0x80) or a .pkl/.pickle name.
    Without `need_labels`, JSON entries may leave out `label` (proposals).

    Raises:
        InputError: no such file, or a malformed one.
        StorageError: the storage could not be read.
    """
    parent, name = _split(url)
    store = Store(parent, options)
    if not store.exists(name):
        raise InputError(f"predictions not found: {url}")
    data = store.read_bytes(name)
    if data[:1] == b"\x80" or name.lower().endswith(_PICKLE_SUFFIXES):
        return Predictions(
            parse_actionformer_pickle(data, name), f"ActionFormer results pickle ({name})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{name}: not UTF-8 text") from None
    return Predictions(
        parse_result_json(text, name, need_labels), f"ActivityNet result JSON ({name})"
    )


def match_video_ids(predictions: list[Segment], videos: set[str]) -> list[Segment]:
    """Predictions keyed as the ground truth keys its videos: ActivityNet's files drop the
    `v_` that its video file names (and so lofipipe's video ids) carry."""
    out = []
    for p in predictions:
        if p.video_id not in videos and p.video_id.startswith("v_") and p.video_id[2:] in videos:
            p = Segment(p.video_id[2:], p.label, p.start, p.end, p.score)
        out.append(p)
    return out


def match_predictions(predictions: Predictions, truth: GroundTruth) -> list[Segment]:
    """The predictions as segments the ground truth can score: label ids named by the
    ground truth's ids (an id it does not know becomes a label it has not, "label id 7",
    which evaluation ignores and counts) and video keys matched (`match_video_ids`).

    Raises:
        InputError: the predictions give label ids and the ground truth has none.
    """
    ids = [p.label for p in predictions.segments if isinstance(p.label, int)]
    if ids and not truth.label_ids:
        raise InputError(
            f"{predictions.format} gives label ids (e.g. {ids[0]}) but {truth.format} "
            f"has no label ids to name them: use ground truth with label ids (ActionFormer's "
            f"JSON, a lofipipe annotations.parquet) or predictions with label names"
        )
    segments = [
        Segment(
            p.video_id,
            truth.label_ids.get(p.label, f"label id {p.label}")
            if isinstance(p.label, int)
            else p.label,
            p.start,
            p.end,
            p.score,
        )
        for p in predictions.segments
    ]
    return match_video_ids(segments, truth.videos)
