"""`lofipipe detect`: a model bundle run on new, unlabelled videos.

The output folder is a lofipipe ROOT of its own: the videos are probed into its manifest
(ingest: bad videos become rows with reasons), encoded straight from the files with the
bundle's encoder, schedule and preprocessing (extract `--from videos`: the encoder actor
pool, on GPUs where there are some), and the bundle's head and soft-NMS run over each
video's features. It writes, at the top of the folder:

    detections.json   ActivityNet result format; `external_data` names the bundle, each
                      video's source fingerprint, and the videos that failed with reasons
    detections.csv    video_id,label,start,end,score
    detections.html   a timeline per video (script-free, self-contained)

A rerun whose videos, bundle and filters are those of the last detections redoes nothing.
A folder that holds another lofipipe ROOT (a manifest or runs that detect did not make)
is refused. The features computed on the way are dropped at the end unless
`keep_features` (then they are a feature set of that ROOT like any other).
"""

from __future__ import annotations

import csv
import html
import io
import json
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lofipipe import __version__
from lofipipe.data.features import read_features
from lofipipe.data.manifest import manifest_rows
from lofipipe.errors import ConfigError, failure_reason
from lofipipe.layout import (
    DETECT_MARKER,
    DETECTIONS_CSV,
    DETECTIONS_HTML,
    DETECTIONS_JSON,
    MANIFEST_PATH,
    RUNS_DIR,
    feature_dir,
)
from lofipipe.models.bundle import ENCODER_PT, ModelBundle, read_bundle
from lofipipe.pipeline.extract import ExtractSummary, run_extract
from lofipipe.pipeline.ingest import IngestSummary, run_ingest
from lofipipe.reports.timeline import STYLE, Bar, VideoTimeline, timelines_html
from lofipipe.schemas.config import Config, config_to_dict, config_with
from lofipipe.storage import Store, redact
from lofipipe.training.feature_set import VideoFeatures
from lofipipe.training.predict import post_processing, predict_video

SHOWN = 10  # predictions per video on the timeline page


@dataclass
class DetectSummary:
    videos: int = 0  # probed fine and encoded
    detections: int = 0
    seconds: float = 0.0
    video_seconds: float = 0.0
    redone: bool = True  # False: the last detections were current
    failed: Counter = field(default_factory=Counter)
    stages: list[IngestSummary | ExtractSummary] = field(default_factory=list)
    single: list[dict[str, Any]] | None = None  # one video: its top detections
    progress_line: str = ""

    @property
    def failed_videos(self) -> int:
        return sum(self.failed.values())

    def lines(self, root: Store) -> list[str]:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.failed.items()))
        rate = (
            f", {self.videos / self.seconds:.2f} videos/s, "
            f"{self.video_seconds / self.seconds:.1f} video-s/s"
            if self.redone and self.seconds
            else " (all current: nothing redone)"
        )
        lines = [
            f"detect: {self.videos} videos, {self.detections} detections"
            + (f", {self.failed_videos} failed ({reasons})" if self.failed else "")
            + rate,
        ]
        if self.single is not None:
            lines.append(f"{'label':<16} {'start':>8} {'end':>8} {'score':>6}")
            lines += [
                f"{d['label']:<16} {d['segment'][0]:8.2f} {d['segment'][1]:8.2f} {d['score']:6.3f}"
                for d in self.single
            ]
        lines.append(
            f"wrote {DETECTIONS_JSON}, {DETECTIONS_CSV} and {DETECTIONS_HTML} under {root.url}"
        )
        return lines


def run_detect(
    config: Config,
    out: Store,
    videos_url: str,
    model_url: str,
    storage_options: Mapping[str, Any],
    command: str,
    min_score: float = 0.0,
    top: int = 0,
    keep_features: bool = False,
) -> DetectSummary:
    """Detects actions in the videos at `videos_url` with the bundle at `model_url`,
    writing the detections under `out`."""
    started = time.monotonic()
    bundle = read_bundle(model_url, dict(storage_options))
    model = Store(model_url, storage_options)
    summary = DetectSummary()
    # The folder becomes detect's ROOT: never a dataset's, whose manifest and annotations
    # ingest would replace.
    if not out.exists(DETECT_MARKER) and (out.exists(MANIFEST_PATH) or out.list(RUNS_DIR)):
        raise ConfigError(
            f"--out {out.url} holds a lofipipe ROOT that detect did not make (its manifest "
            f"and annotations would be replaced): choose an empty or new folder"
        )
    out.write_text(DETECT_MARKER, json.dumps({"model": redact(model.url, storage_options)}))
    summary.stages.append(run_ingest(config, out, videos_url, None, storage_options, command))
    rows = manifest_rows(out)
    ok = {vid: row for vid, row in rows.items() if row["status"] == "ok"}
    failed = {vid: failure_reason(row["error"]) for vid, row in rows.items() if vid not in ok}
    sources = {vid: row["fingerprint"] for vid, row in ok.items()}
    filters = {"min_score": min_score, "top": top}
    last = _last_detections(out)
    if (
        last
        and last["model_sha256"] == bundle.digest
        and last["videos"] == sources
        and last.get("filters") == filters
    ):
        summary.redone = False
        results, failed = last["results"], last["failed"]
    else:
        extract = _run_extract(
            config, out, bundle, model.url_of(ENCODER_PT), storage_options, command
        )
        summary.stages.append(extract)
        failed.update(extract.failed_reasons)
        features = read_features(out, extract.fingerprint)
        head, post = bundle.head(), post_processing(bundle.head_config)
        results = {}
        for video_id in sorted(features):
            values, times = features[video_id]
            video = VideoFeatures(
                video_id, values, times[:, 0], times[:, 1], np.zeros((0, 2)), np.zeros(0, int)
            )
            found = predict_video(
                head, video, bundle.labels, bundle.head_config.levels, post, bundle.window
            )
            found = [d for d in found if d["score"] >= min_score]
            results[video_id] = found[:top] if top else found
        record = {
            "version": f"lofipipe {__version__}",
            "results": results,
            "external_data": {
                "model": redact(model.url, storage_options),
                "model_sha256": bundle.digest,
                "videos": sources,  # every video probed fine, detected or failed later
                "filters": filters,
                "failed": failed,
            },
        }
        durations = {vid: float(ok[vid]["duration"] or 0.0) for vid in results}
        out.write_text(DETECTIONS_CSV, _csv(results))
        out.write_text(DETECTIONS_HTML, _page(results, durations, bundle, failed))
        out.write_text(DETECTIONS_JSON, json.dumps(record))  # last: a finished run's record
        if not keep_features:
            for name in out.list(feature_dir(extract.fingerprint)):
                out.remove(name)
        summary.video_seconds = sum(durations.values())
        summary.seconds = time.monotonic() - started
    summary.videos, summary.detections = len(results), sum(map(len, results.values()))
    summary.failed = Counter(failed.values())
    if len(rows) == 1 and results:
        summary.single = next(iter(results.values()))[:SHOWN]
    return summary


def _run_extract(
    config: Config,
    out: Store,
    bundle: ModelBundle,
    encoder_url: str,
    storage_options: Mapping[str, Any],
    command: str,
) -> ExtractSummary:
    """Features of the videos from the bundle's encoder, as its features were made."""
    with tempfile.TemporaryDirectory() as scratch:
        schedule = Path(scratch) / f"{bundle.schedule.name}.yaml"
        schedule.write_text(yaml.safe_dump(config_to_dict(bundle.schedule), sort_keys=False))
        settings = config_with(
            config,
            extract={
                "encoder": bundle.encoder_name,
                "losa": bundle.losa,
                "checkpoint": encoder_url,
                "source": "videos",
                "export": None,
                "precision": bundle.precision,  # the head was trained on such features
            },
            materialize={"schedule": str(schedule), "preprocess": bundle.preprocess.name},
        )
        return run_extract(settings, out, storage_options, command)


def _last_detections(out: Store) -> dict[str, Any] | None:
    if not out.exists(DETECTIONS_JSON):
        return None
    record = json.loads(out.read_text(DETECTIONS_JSON))
    return {"results": record["results"], **record["external_data"]}


def _csv(results: Mapping[str, list[dict[str, Any]]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video_id", "label", "start", "end", "score"])
    for video_id, items in results.items():
        for item in items:
            writer.writerow([video_id, item["label"], *item["segment"], item["score"]])
    return buffer.getvalue()


def _page(
    results: Mapping[str, list[dict[str, Any]]],
    durations: Mapping[str, float],
    bundle: ModelBundle,
    failed: Mapping[str, str],
) -> str:
    timelines = [
        VideoTimeline(
            video_id,
            durations[video_id],
            [
                (
                    f"top {min(SHOWN, len(items))}",
                    [Bar(d["label"], *d["segment"], d["score"]) for d in items[:SHOWN]],
                )
            ],
        )
        for video_id, items in results.items()
    ]
    failures = "".join(
        f"<li>{html.escape(vid)}: {html.escape(reason)}</li>" for vid, reason in failed.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>lofipipe detections</title>"
        f"<style>body{{font-family:sans-serif;margin:24px}}{STYLE}</style></head><body>"
        f"<h1>Detections</h1><p>{len(results)} videos; {bundle.encoder_name} features, "
        f"{html.escape(bundle.schedule.name)} schedule, {len(bundle.labels)} classes; "
        f"the top {SHOWN} detections of each video with their scores.</p>"
        + timelines_html(timelines, bundle.labels)
        + (f"<h2>Failed videos</h2><ul>{failures}</ul>" if failures else "")
        + "</body></html>"
    )
