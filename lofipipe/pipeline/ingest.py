"""The ingest graph: list videos -> probe each as a Ray task -> manifest and annotations.

Outputs under ROOT:
    manifest/videos.parquet   one row per listed video (MANIFEST)
    manifest/errors.parquet   failed probes and annotation issues (ERRORS)
    manifest/ingest.yaml      the resolved config of the run
    annotations.parquet       normalized segments of the listed videos (ANNOTATIONS)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lofipipe import __version__
from lofipipe.data.annotation_files import NormalizedAnnotations, normalize, read_annotations
from lofipipe.data.manifest import manifest_rows
from lofipipe.data.stage_log import record_stage
from lofipipe.data.video_ids import video_id_for_file
from lofipipe.errors import InputError, VideoFailure, failure_reason
from lofipipe.layout import ANNOTATIONS_PATH, ERRORS_PATH, INGEST_CONFIG_PATH, MANIFEST_PATH
from lofipipe.pipeline.progress import Progress
from lofipipe.schemas.config import Config, config_to_yaml
from lofipipe.schemas.tables import (
    ANNOTATIONS,
    ERRORS,
    MANIFEST,
    SKIPPED_EXTENSION,
    UNLABELLED,
)
from lofipipe.storage import Store, has_extension, list_files
from lofipipe.workers.runtime import ensure_ray
from lofipipe.workers.task_pool import TaskFailure, map_with_time_limit
from lofipipe.workers.video_prober import VideoItem, VideoProber, source_signature

_EXAMPLES = 5  # annotation issues spelled out in the summary; the rest are in the table


@dataclass
class IngestSummary:
    listed: int = 0
    probed: int = 0
    unchanged: int = 0
    removed: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)
    hours: float = 0.0
    segments: int = 0
    labels: int = 0
    annotation_format: str = ""  # what the annotations were read as; "" when none given
    annotated_videos: int = 0  # videos the annotation file lists
    unlabelled: int = 0  # listed videos without annotations (subset "unlabelled")
    skipped: Counter = field(default_factory=Counter)  # other files, by extension
    annotation_issues: Counter = field(default_factory=Counter)
    issue_examples: list[str] = field(default_factory=list)
    progress_line: str = ""

    @property
    def failed_videos(self) -> int:
        return sum(self.failed.values())

    def lines(self, root: Store) -> list[str]:
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.failed.items()))
        issues = ", ".join(f"{r} {n}" for r, n in sorted(self.annotation_issues.items()))
        skipped = ", ".join(f"{ext} {n}" for ext, n in sorted(self.skipped.items()))
        if self.annotation_format:
            annotations = (
                f"annotations: {self.annotation_format}, {self.annotated_videos} videos; "
                f"{self.segments} segments, {self.labels} labels"
            )
        else:
            annotations = "annotations: none given"
        if self.unlabelled:
            annotations += f"; {self.unlabelled} videos without any (subset {UNLABELLED!r})"
        return [
            f"videos: {self.listed} listed, {self.probed} probed, {self.unchanged} unchanged "
            f"since the last run, {self.removed} gone from the listing",
            *(
                [
                    f"other files: {sum(self.skipped.values())} skipped, not a video extension "
                    f"({skipped}; each in {ERRORS_PATH} as {SKIPPED_EXTENSION})"
                ]
                if self.skipped
                else []
            ),
            f"status: {self.ok} ok, {failed} failed" + (f" ({reasons})" if reasons else ""),
            f"video: {self.hours:.2f} hours in the ok videos",
            annotations + (f"; issues: {issues} (all in {ERRORS_PATH})" if issues else ""),
            *(f"  {example}" for example in self.issue_examples),
            f"wrote {root.url_of(MANIFEST_PATH)} and {root.url_of(ANNOTATIONS_PATH)}",
        ]


LIST_SUFFIX = ".txt"  # --videos naming a file of video URLs, one per line


@dataclass(frozen=True)
class Listing:
    """What `--videos` holds: the videos, and every other file (left out, and counted)."""

    videos: list[VideoItem]
    skipped: list[str]  # URLs of files whose extension is not a video extension


def _files(url: str, options: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The files at `url`: a folder, a glob or one file, or those a list names (a `.txt`
    file: a URL or path per line, relative ones from the list's folder; blank lines and
    `#` comments skipped)."""
    if not url.lower().endswith(LIST_SUFFIX):
        return list_files(url, options, None)
    folder, _, name = url.rpartition("/")
    listing = Store(folder or ".", options)
    entries = [line.strip() for line in listing.read_text(name).splitlines()]
    files = []
    for entry in entries:
        if entry and not entry.startswith("#"):
            absolute = "://" in entry or entry.startswith("/")
            files += list_files(entry if absolute else listing.url_of(entry), options, None)
    return sorted(files)


def list_videos(url: str, options: Mapping[str, Any], extensions) -> Listing:
    """The video files at `url` (folder, glob, one file or a `.txt` list of them), sorted,
    with unique ids, and the other files there.

    Raises:
        InputError: no video file there, or two files that would share a video id.
    """
    listed, skipped = [], []
    for uri, info in _files(url, options):
        (listed if has_extension(uri, extensions) else skipped).append((uri, info))
    if not listed:
        others = f"; {len(skipped)} other files there" if skipped else ""
        raise InputError(f"no videos at {url} (looked for: {', '.join(extensions)}{others})")
    items, seen = [], {}
    for uri, info in listed:
        video_id = video_id_for_file(uri)
        if video_id in seen:
            raise InputError(
                f"duplicate video id {video_id!r}: {seen[video_id]} and {uri}; rename one of them"
            )
        seen[video_id] = uri
        items.append(VideoItem(video_id, uri, int(info.get("size") or 0), source_signature(info)))
    return Listing(items, [uri for uri, _ in skipped])


def _extension(uri: str) -> str:
    name = uri.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name.lstrip(".") else "(none)"


def _skipped_row(uri: str) -> dict[str, Any]:
    name = uri.rsplit("/", 1)[-1]
    failure = VideoFailure(
        SKIPPED_EXTENSION,
        f"{name}: extension {_extension(uri)} is not in ingest.extensions; not probed",
    )
    return {
        "stage": "ingest",
        "video_id": None,
        "uri": uri,
        "reason": failure.reason,
        "error": failure.line,
        "attempts": 0,
    }


def is_unchanged(old: Mapping[str, Any] | None, item: VideoItem) -> bool:
    """Whether a listed video is the one that probed fine last time (its manifest row
    `old`), so that row stands without probing again."""
    return bool(
        old
        and old["status"] == "ok"
        and old["uri"] == item.uri
        and old["source_signature"] == item.source_signature
    )


def _failed_row(item: VideoItem, failure: TaskFailure) -> dict[str, Any]:
    return {
        "video_id": item.video_id,
        "uri": item.uri,
        "size": item.size,
        "source_signature": item.source_signature,
        "status": "failed",
        "error": failure.line,
        "lofipipe_version": __version__,
    }


def run_ingest(
    config: Config,
    root: Store,
    videos_url: str,
    annotations_url: str | None,
    storage_options: Mapping[str, Any],
    command: str,
) -> IngestSummary:
    """Ingests the videos at `videos_url` and their annotations (if any) into `root`.

    Videos without annotations get subset `unlabelled`: they are materialized and their
    features extracted like the others. Other files under `videos_url` are counted and
    written to errors.parquet as `skipped_extension`. Unchanged videos that probed fine
    last time are kept as they were; new, changed and previously failed ones are probed
    again.
    """
    listing = list_videos(videos_url, storage_options, config.ingest.extensions)
    items = listing.videos
    # Malformed annotations fail before any work.
    raw = read_annotations(annotations_url, storage_options) if annotations_url else None
    previous = manifest_rows(root)
    rows: dict[str, dict[str, Any]] = {}
    to_probe = []
    for item in items:
        old = previous.get(item.video_id)
        if is_unchanged(old, item):
            rows[item.video_id] = old
        else:
            to_probe.append(item)
    summary = IngestSummary(
        listed=len(items),
        probed=len(to_probe),
        unchanged=len(rows),
        removed=len(set(previous) - {item.video_id for item in items}),
        annotation_format=raw.format if raw else "",
        annotated_videos=len(raw.videos) if raw else 0,
        skipped=Counter(_extension(uri) for uri in listing.skipped),
    )
    if to_probe:
        ensure_ray(config.ray)
        prober = VideoProber(storage_options, config.ingest)
        with Progress("probe", len(to_probe)) as progress:
            settings = config.ingest

            def limit(item: VideoItem) -> float:
                return settings.probe_timeout_s + settings.probe_timeout_s_per_gb * item.size / 1e9

            for item, outcome in map_with_time_limit(prober, to_probe, limit):
                row = _failed_row(item, outcome) if isinstance(outcome, TaskFailure) else outcome
                rows[item.video_id] = row
                progress.done(failure_reason(row["error"]) if row["status"] == "failed" else None)
        summary.progress_line = progress.summary()
        record_stage(root, "ingest", progress.seconds, progress.ok, failed=progress.failed)

    durations = {
        vid: row.get("duration") if row["status"] == "ok" else None for vid, row in rows.items()
    }
    annotations = normalize(raw, durations) if raw else NormalizedAnnotations([], {}, [])
    new_rows = []
    for video_id in sorted(rows):
        row = dict(rows[video_id], subset=annotations.subsets.get(video_id, UNLABELLED))
        new_rows.append(row)
    errors = [
        {
            "stage": "ingest",
            "video_id": row["video_id"],
            "uri": row["uri"],
            "reason": failure_reason(row["error"]),
            "error": row["error"],
            "attempts": 1,
        }
        for row in new_rows
        if row["status"] == "failed"
    ]
    errors += [_skipped_row(uri) for uri in listing.skipped] + annotations.issues

    root.write_table(MANIFEST_PATH, MANIFEST.from_rows(new_rows))
    root.write_table(ANNOTATIONS_PATH, ANNOTATIONS.from_rows(annotations.rows))
    root.write_table(ERRORS_PATH, ERRORS.from_rows(errors))
    root.write_text(INGEST_CONFIG_PATH, config_to_yaml(config, command))

    summary.ok = sum(row["status"] == "ok" for row in new_rows)
    summary.failed = Counter(
        failure_reason(row["error"]) for row in new_rows if row["status"] == "failed"
    )
    summary.hours = sum(row["duration"] or 0.0 for row in new_rows if row["status"] == "ok") / 3600
    summary.unlabelled = sum(row["subset"] == UNLABELLED for row in new_rows)
    summary.segments = len(annotations.rows)
    summary.labels = len({row["label"] for row in annotations.rows})
    summary.annotation_issues = Counter(issue["reason"] for issue in annotations.issues)
    summary.issue_examples = [issue["error"] for issue in annotations.issues[:_EXAMPLES]]
    return summary
