"""`ROOT/runs/<run>/report.html`: one self-contained page (figures inlined as PNG data
URLs, no script, nothing fetched) that sums up a training run for a person: its loss and
learning-rate curves, mAP per tIoU threshold and per class, the throughput of every stage
that fed it, the errors met on the way, a contact sheet of the snippets it saw, and its
resolved config. Everything is read back from ROOT, so the page can be written again at
any time (`lofipipe report`)."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from lofipipe.data.annotations import AnnotationIndex
from lofipipe.data.manifest import manifest_rows
from lofipipe.data.runs import read_metrics
from lofipipe.data.snippets import SnippetReader
from lofipipe.data.stage_log import stage_totals
from lofipipe.errors import InputError
from lofipipe.layout import (
    ERRORS_PATH,
    FEATURES_DIR,
    SHARDS_DIR,
    STATS_PATTERN,
    evaluation_path,
    feature_dir,
    predictions_path,
    report_path,
    run_config_path,
)
from lofipipe.reports.contact_sheet import contact_sheet
from lofipipe.reports.figures import map_per_tiou, per_class_ap, png, training_curves
from lofipipe.reports.timeline import STYLE, Bar, VideoTimeline, timelines_html
from lofipipe.schemas.schedule import Schedule, load_schedule
from lofipipe.schemas.tables import ERRORS
from lofipipe.storage import Store

MAX_ERRORS = 200  # rows in the error table; the rest are counted
MAX_TIMELINES = 20  # validation videos drawn on a time axis
TIMELINE_PREDICTIONS = 10  # the top predictions drawn per video
_SHEET_ROWS = 8

_STYLE = (
    """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.8em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #666; font-size: .9em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
"""
    + STYLE
)


def write_run_page(root: Store, run: str) -> str:
    """Writes the run's report page; returns its URL."""
    root.write_text(report_path(run), render_run_page(root, run))
    return root.url_of(report_path(run))


def render_run_page(root: Store, run: str) -> str:
    config_path = run_config_path(run)
    if not root.exists(config_path):
        raise InputError(f"no run {run!r} under {root.url} (no {config_path})")
    config_text = root.read_text(config_path)
    config = yaml.safe_load(config_text) or {}
    train = config.get("train", {})
    rows = read_metrics(root, run)
    evaluation = (
        json.loads(root.read_text(evaluation_path(run)))
        if root.exists(evaluation_path(run))
        else None
    )
    schedule = load_schedule(config.get("materialize", {}).get("schedule", "lofi-anet"))
    sections = [
        _header(run, train, rows, evaluation),
        _training(run, rows, evaluation),
        _scores(evaluation),
        _timelines(root, run),
        _throughput(root),
        _errors(root, train),
        _contact(root, train, schedule),
        _section("config", "Resolved config", f"<pre>{html.escape(config_text)}</pre>"),
    ]
    return (
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>lofipipe run {html.escape(run)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )


def _section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{body}</section>"


def _image(name: str, data: bytes, caption: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f"<figure id='figure-{name}'><img alt='{html.escape(caption)}' "
        f"src='data:image/png;base64,{encoded}'><figcaption>{html.escape(caption)}"
        f"</figcaption></figure>"
    )


def _table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: set[int], table_id: str
) -> str:
    def cell(tag: str, index: int, value: Any) -> str:
        kind = " class='num'" if index in numeric else ""
        return f"<{tag}{kind}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _header(
    run: str, train: dict[str, Any], rows: list[dict[str, Any]], evaluation: dict[str, Any] | None
) -> str:
    epochs = [r for r in rows if r["kind"] == "epoch"]
    facts = [
        ("mode", train.get("mode", "?")),
        (
            "encoder",
            train.get("encoder", "?")
            if train.get("mode") != "head"
            else f"features {train.get('features', '?')}",
        ),
        ("epochs", f"{len(epochs)} of {train.get('epochs', '?')}"),
        ("workers", train.get("workers", "?")),
        ("time in epochs", f"{sum(r['seconds'] for r in epochs):.1f} s"),
    ]
    if evaluation:
        first = next(iter(evaluation["mAP"]))
        facts += [
            (
                f"{train.get('val_subset', 'validation')} mAP@{first}",
                f"{100 * evaluation['mAP'][first]:.2f}",
            ),
            ("average mAP", f"{100 * evaluation['average_mAP']:.2f}"),
        ]
    items = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts
    )
    written = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        f"<header><h1>lofipipe run {html.escape(run)}</h1>"
        f"<p class='note'>written {written}</p><table id='summary'>{items}</table>"
        f"</header>"
    )


def _training(run: str, rows: list[dict[str, Any]], evaluation: dict[str, Any] | None) -> str:
    if not rows:
        return _section("training", "Training", "<p class='note'>no metrics yet</p>")
    keys = list(evaluation["mAP"]) if evaluation else []
    thresholds = [float(k) for k in keys]
    figure = _image(
        "training",
        png(training_curves(run, rows, thresholds)),
        "Training loss and learning rate per step; validation mAP per epoch",
    )
    return _section("training", "Training", figure)


def _scores(evaluation: dict[str, Any] | None) -> str:
    if evaluation is None:
        return _section("scores", "Evaluation", "<p class='note'>not evaluated yet</p>")
    keys = list(evaluation["mAP"])
    per_tiou = _table(
        ["tIoU", *keys, "average"],
        [
            [
                "mAP (%)",
                *(f"{100 * evaluation['mAP'][k]:.2f}" for k in keys),
                f"{100 * evaluation['average_mAP']:.2f}",
            ]
        ],
        set(range(1, len(keys) + 2)),
        "map-per-tiou",
    )
    classes = sorted(evaluation["per_class"].items())
    per_class = _table(
        ["class", "average AP (%)", *(f"AP@{k}" for k in keys)],
        [
            [
                label,
                f"{100 * item['average_AP']:.2f}",
                *(f"{100 * item['AP'][k]:.2f}" for k in keys),
            ]
            for label, item in classes
        ],
        set(range(1, len(keys) + 2)),
        "ap-per-class",
    )
    counts = (
        f"<p class='note'>{evaluation['videos']} videos, {evaluation['instances']} "
        f"ground-truth segments, {evaluation['predictions']} predictions</p>"
    )
    return _section(
        "scores",
        "Evaluation",
        counts
        + _image("map-per-tiou", png(map_per_tiou(evaluation)), "mAP per tIoU threshold")
        + per_tiou
        + _image("ap-per-class", png(per_class_ap(evaluation)), "Average AP per class")
        + per_class,
    )


def _timelines(root: Store, run: str) -> str:
    """Per validation video (the first MAX_TIMELINES), the ground truth and the top
    predictions on one time axis."""
    if not root.exists(predictions_path(run)):
        return ""
    predictions = json.loads(root.read_text(predictions_path(run)))["results"]
    annotations = AnnotationIndex(root)
    names = annotations.label_names
    durations = {
        video_id: float(row["duration"] or 0.0) for video_id, row in manifest_rows(root).items()
    }
    videos = []
    for video_id in sorted(predictions)[:MAX_TIMELINES]:
        segments, labels = annotations.segments(video_id)
        found = predictions[video_id][:TIMELINE_PREDICTIONS]
        truth = [
            Bar(names[int(k)], float(a), float(b))
            for (a, b), k in zip(segments, labels, strict=True)
        ]
        top = [Bar(p["label"], *p["segment"], p["score"]) for p in found]
        ends = [bar.end for bar in truth + top]
        duration = durations.get(video_id) or max(ends, default=1.0)
        videos.append(
            VideoTimeline(video_id, duration, [("ground truth", truth), (f"top {len(top)}", top)])
        )
    more = len(predictions) - len(videos)
    note = f"<p class='note'>{more} more validation videos in predictions.json.</p>"
    return _section(
        "timelines",
        "Ground truth and predictions",
        timelines_html(videos, names) + (note if more > 0 else ""),
    )


def _throughput(root: Store) -> str:
    totals = stage_totals(root)
    if not totals:
        return _section(
            "throughput",
            "Stage throughput",
            "<p class='note'>no stage has recorded its work under this root</p>",
        )

    def rate(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "-"

    rows = [
        [
            t.stage,
            t.invocations,
            t.videos,
            t.snippets or "-",
            t.failed,
            f"{t.seconds:.1f}",
            rate(t.rate(t.videos)),
            rate(t.rate(t.snippets)),
        ]
        for t in totals
    ]
    note = (
        "<p class='note'>Wall time of each stage, summed over its invocations (a resumed "
        "stage adds up). Extraction is listed per feature set; training counts a video once "
        "per epoch.</p>"
    )
    return _section(
        "throughput",
        "Stage throughput",
        _table(
            [
                "stage",
                "invocations",
                "videos",
                "snippets",
                "failed",
                "seconds",
                "videos/s",
                "snippets/s",
            ],
            rows,
            {1, 2, 3, 4, 5, 6, 7},
            "stage-throughput",
        )
        + note,
    )


def collect_errors(root: Store, features: str | None = None) -> list[tuple[str, str, str]]:
    """(stage, video, one-line error) of everything that failed under ROOT: probes and
    annotation issues, videos that failed to materialize (once, not per fidelity), and
    videos missing from the feature set `features` (all feature sets when None)."""
    found: dict[tuple[str, str, str], None] = {}
    if root.exists(ERRORS_PATH):
        for row in ERRORS.check(root.read_table(ERRORS_PATH), ERRORS_PATH).to_pylist():
            found[(row["stage"], row["video_id"] or "-", row["error"])] = None
    for name in root.list(SHARDS_DIR, pattern=STATS_PATTERN, recursive=True):
        for video, error in json.loads(root.read_text(name))["failed"].items():
            found[("materialize", video, error)] = None
    folder = feature_dir(features) if features else FEATURES_DIR
    for name in root.list(folder, pattern=STATS_PATTERN, recursive=True):
        for video, error in json.loads(root.read_text(name))["failed"].items():
            if ("materialize", video, error) not in found:
                found[("extract", video, error)] = None
    return list(found)


def _errors(root: Store, train: dict[str, Any]) -> str:
    errors = collect_errors(root, train.get("features") if train.get("mode") == "head" else None)
    if not errors:
        return _section(
            "errors",
            "Errors",
            "<p class='note'>none: every video passed every "
            "stage</p>" + _table(["stage", "video", "error"], [], set(), "errors"),
        )
    more = (
        f"<p class='note'>and {len(errors) - MAX_ERRORS} more</p>"
        if len(errors) > MAX_ERRORS
        else ""
    )
    return _section(
        "errors",
        f"Errors ({len(errors)})",
        _table(["stage", "video", "error"], errors[:MAX_ERRORS], set(), "errors") + more,
    )


def _contact(root: Store, train: dict[str, Any], schedule: Schedule) -> str:
    mode = train.get("mode", "head")
    fidelity = schedule.validation_fidelity(mode)
    reader = SnippetReader(root, fidelity.name)
    try:
        videos = [video for stats in reader.stats() for video in stats["videos"]]
    except InputError:  # features extracted --from videos, or copied in without shards
        videos = []
    if not videos:
        return _section(
            "snippets",
            "Snippets",
            f"<p class='note'>no {fidelity.name} shards under this root to show</p>",
        )
    annotations = AnnotationIndex(root)
    wanted = set(annotations.videos(train.get("val_subset", "validation")))
    video_id = next((v for v in videos if v in wanted), videos[0])
    sheet = contact_sheet(reader.read_video(video_id), annotations.label_names, _SHEET_ROWS)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    caption = (
        f"Video {video_id} at fidelity {fidelity.name} ({fidelity.frames} frames of "
        f"{fidelity.size}x{fidelity.size} px per snippet): one row per snippet, red "
        f"captions inside annotated actions"
    )
    return _section("snippets", "Snippets", _image("contact-sheet", buffer.getvalue(), caption))
