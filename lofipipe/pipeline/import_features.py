"""`lofipipe features import`: per-video feature files made by other tools -> a feature set
under ROOT/features/<fingerprint>/ that head training and evaluation read exactly as one
that `lofipipe extract` wrote.

    <source>/<video_id>.npy|.npz|.pt      (the layouts: data/feature_files.py)
      -> checked against ROOT's manifest -> features/<fingerprint>/lineage.json
                                            features/<fingerprint>/part-NNNNN.parquet
                                            features/<fingerprint>/part-NNNNN.stats.json

The fingerprint hashes the lineage's identity: `lineage: imported`, the format, the time
parameters (fps, stride, frames, offset) and `checksum`, a SHA-256 over the feature files
(each one's name and SHA-256, sorted by name). The same files import to the same
fingerprint, and a rerun skips every part whose marker records the same file hashes; a
changed file makes a new feature set beside the old one.

Each file is checked before anything is written. Its video must be an ok video of the
manifest, the file must hold one 2-D array of finite numbers with the channels of the
first good file, and its snippets must fit the video's duration (`SnippetTiming.misfit`).
A file that fails is an issue with a one-line reason and its video is left out; an ok
video of the manifest without a file is missing. Neither stops the others, whose parts
are what a clean import writes. Files of other types (e.g. JSON sidecars) are counted and
ignored.

Parts group the imported videos as extract groups them (`materialize.videos_per_shard`
in video_id order). No Ray: reading the files is I/O that one process does at storage
speed. A file whose part is written is read twice, once to check and hash it and once to
write it, so that no more than one part's arrays are in memory at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lofipipe import __version__
from lofipipe.data.feature_files import (
    FEATURE_EXTENSIONS,
    SnippetTiming,
    extension_of,
    read_feature_array,
)
from lofipipe.data.features import IMPORTED
from lofipipe.data.manifest import SourceVideo, manifest_rows, ok_videos, shard_groups
from lofipipe.data.stage_log import record_stage
from lofipipe.data.video_ids import annotation_key_to_video_id
from lofipipe.errors import ConfigError, InputError, VideoFailure, failure_reason
from lofipipe.layout import (
    feature_dir,
    feature_stats_path,
    lineage_path,
)
from lofipipe.pipeline.progress import Progress
from lofipipe.schemas.config import Config, FeatureImportConfig
from lofipipe.schemas.schedule import Fidelity, Schedule
from lofipipe.storage import Store, redact
from lofipipe.workers.feature_extractor import (
    EncodedVideo,
    remove_feature_parts,
    write_feature_part,
)

_SHOWN = 20  # issues and missing videos spelled out in the summary; lineage.json has all
# Imported features have no pixel size; the schedule needs one (only encoders read it).
_SIZE = 224


@dataclass(frozen=True)
class CheckedFile:
    """A feature file that passed every check."""

    name: str  # relative to the source folder
    video_id: str
    digest: str  # SHA-256 of its bytes
    snippets: int
    dim: int
    transposed: bool  # stored (C, T)


@dataclass(frozen=True)
class ImportIssue:
    """A feature file left out, and why."""

    name: str
    video_id: str | None  # None: no video of the manifest
    line: str  # "reason: message"


@dataclass
class ImportSummary:
    fingerprint: str
    source: str  # credentials redacted
    format: str
    imported: int = 0
    parts: int = 0
    written: int = 0
    skipped: int = 0
    transposed: int = 0
    ignored: int = 0  # files of other types
    missing: list[str] = field(default_factory=list)
    issues: list[ImportIssue] = field(default_factory=list)
    progress_line: str = ""

    @property
    def failed_videos(self) -> int:
        """Videos of the manifest left without features."""
        return len(self.missing) + len({i.video_id for i in self.issues if i.video_id})

    def lines(self, root: Store) -> list[str]:
        out = [
            f"features {self.fingerprint}: {self.imported} videos imported from {self.source} "
            f"({self.format}), {self.parts} parts ({self.written} written, {self.skipped} "
            f"already done), "
            + (
                f"under {root.url_of(feature_dir(self.fingerprint))}"
                if self.imported
                else "nothing written"
            )
        ]
        if self.transposed:
            out.append(f"{self.transposed} files held (C, T) arrays: transposed")
        if self.missing:
            shown = ", ".join(self.missing[:_SHOWN])
            more = f" and {len(self.missing) - _SHOWN} more" if len(self.missing) > _SHOWN else ""
            out.append(f"missing: {len(self.missing)} videos without a feature file: {shown}{more}")
        if self.issues:
            reasons = Counter(failure_reason(issue.line) for issue in self.issues)
            out.append(
                f"not imported: {len(self.issues)} files ("
                + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
                + ")"
            )
            out += [f"  {issue.name}: {issue.line}" for issue in self.issues[:_SHOWN]]
            if len(self.issues) > _SHOWN:
                out.append(f"  ... {len(self.issues) - _SHOWN} more in lineage.json")
        if self.ignored:
            out.append(
                f"ignored: {self.ignored} files that are not "
                f"{', '.join('.' + e for e in FEATURE_EXTENSIONS)}"
            )
        return out


def _timing(settings: FeatureImportConfig) -> SnippetTiming:
    """The snippet timing the settings give; all of it is required."""
    for key in ("source", "fps", "stride", "frames"):
        if getattr(settings, key) is None:
            option = "--from" if key == "source" else f"--{key}"
            raise ConfigError(f"feature_import.{key}: required ({option})")
    assert settings.fps and settings.stride and settings.frames  # for the type checker
    return SnippetTiming(
        settings.fps, settings.stride, settings.frames, settings.offset, settings.min_coverage
    )


def _stem(name: str) -> str:
    """`synth_0001` of `synth_0001.npy`."""
    return name.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _check_files(
    source: Store,
    names: list[str],
    settings: FeatureImportConfig,
    timing: SnippetTiming,
    rows: Mapping[str, Mapping[str, Any]],
    ok: Mapping[str, SourceVideo],
) -> tuple[list[CheckedFile], list[ImportIssue], dict[str, str], str]:
    """Reads and checks every file against the manifest's `rows` and `ok` videos:
    (good files, issues, name -> SHA-256, progress line).

    A file's video is its name without the extension, as ingest names videos (or with
    ActivityNet's `v_` prefix, as annotation keys are matched).
    """
    ids = {name: annotation_key_to_video_id(_stem(name), set(rows)) for name in names}
    files_of = Counter(video_id for video_id in ids.values() if video_id)
    good: list[CheckedFile] = []
    issues: list[ImportIssue] = []
    digests: dict[str, str] = {}
    with Progress("check", len(names), unit="file") as progress:
        for name in names:
            data = source.read_bytes(name)
            digests[name] = hashlib.sha256(data).hexdigest()
            video_id = ids[name]
            try:
                video = _video_of(name, video_id, files_of, rows, ok)
                array = read_feature_array(data, name)
                values = timing.orient(array, video.duration, settings.format == "opentad")
                if good and values.shape[1] != good[0].dim:
                    raise VideoFailure(
                        "dim_mismatch",
                        f"{values.shape[1]} channels, where {good[0].name} has {good[0].dim}",
                    )
            except VideoFailure as failure:
                issues.append(ImportIssue(name, video_id, failure.line))
                progress.done(failed_reason=failure.reason)
                continue
            snippets, dim = values.shape
            good.append(
                CheckedFile(name, video.video_id, digests[name], snippets, dim, values is not array)
            )
            progress.done()
    return good, issues, digests, progress.summary()


def _video_of(
    name: str,
    video_id: str | None,
    files_of: Mapping[str, int],
    rows: Mapping[str, Mapping[str, Any]],
    ok: Mapping[str, SourceVideo],
) -> SourceVideo:
    """The ok manifest video a file is for.

    Raises:
        VideoFailure: no such video, another file for it, or a video that failed ingest.
    """
    if video_id is None:
        raise VideoFailure("not_in_manifest", f"no video {_stem(name)!r} in the manifest")
    if files_of[video_id] > 1:
        raise VideoFailure("duplicate", f"{files_of[video_id]} files are video {video_id}")
    if video_id not in ok:
        error = rows[video_id].get("error") or "failed"
        raise VideoFailure("video_failed", f"video {video_id} failed ingest ({error})")
    return ok[video_id]


def _schedule(timing: SnippetTiming, window: int) -> Schedule:
    """The stride-sampling schedule the files were made with; its full fidelity's
    snippets (head training's window) are the longest video's, so that training and
    inference see whole videos unless `train.head.window` asks for windows."""
    full = Fidelity("full", window, timing.frames, _SIZE)
    # A schedule needs a training fidelity; head training reads the full one only.
    train = Fidelity("train", window, timing.frames, _SIZE)
    return Schedule(
        IMPORTED, full, (train,), sampling="stride", fps=timing.fps, stride=timing.stride
    )


def _identity(settings: FeatureImportConfig, digests: Mapping[str, str]) -> dict[str, Any]:
    """What the fingerprint hashes: the format, the time parameters, and a SHA-256 over
    each file's name and SHA-256, sorted by name."""
    listing = "".join(f"{name}\t{digests[name]}\n" for name in sorted(digests))
    return {
        "lineage": IMPORTED,
        "format": settings.format,
        "fps": settings.fps,
        "stride": settings.stride,
        "frames": settings.frames,
        "offset": settings.offset,
        "checksum": hashlib.sha256(listing.encode()).hexdigest(),
    }


def run_import(
    config: Config, root: Store, storage_options: Mapping[str, Any], command: str
) -> ImportSummary:
    """Imports the feature files under `config.feature_import.source` as a feature set.

    Raises:
        ConfigError: a time parameter or the source is not given.
        InputError: ROOT has no manifest, or the source holds no feature files.
    """
    settings = config.feature_import
    timing = _timing(settings)
    source = Store(str(settings.source), storage_options)
    listed = source.list()
    names = [name for name in listed if extension_of(name) in FEATURE_EXTENSIONS]
    shown_source = redact(source.url, storage_options)
    if not names:
        raise InputError(
            f"no {', '.join('.' + e for e in FEATURE_EXTENSIONS)} files directly under "
            f"{shown_source}"
        )
    ok = {video.video_id: video for video in ok_videos(root)}  # sorted by id
    good, issues, digests, checked_line = _check_files(
        source, names, settings, timing, manifest_rows(root), ok
    )
    identity = _identity(settings, digests)
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    with_files = {file.video_id for file in good} | {issue.video_id for issue in issues}
    summary = ImportSummary(
        fingerprint,
        shown_source,
        settings.format,
        imported=len(good),
        transposed=sum(file.transposed for file in good),
        ignored=len(listed) - len(names),
        missing=[video_id for video_id in ok if video_id not in with_files],
        issues=issues,
        progress_line=checked_line,
    )
    if not good:
        return summary
    lineage = {
        **identity,
        "fingerprint": fingerprint,
        "source": shown_source,
        "files": len(names),
        "dim": good[0].dim,
        "encoder": f"{IMPORTED}:{settings.format}",
        "weights": f"sha256:{identity['checksum']}",  # what the values are: these files
        "checkpoint": None,
        "schedule": IMPORTED,
        "schedule_spec": _schedule(timing, max(file.snippets for file in good)).record(),
        "missing": summary.missing,
        "issues": {issue.name: issue.line for issue in issues},
        "lofipipe_version": __version__,
        "command": command,
    }
    by_video = {file.video_id: file for file in good}
    groups = shard_groups(
        [video for video_id, video in ok.items() if video_id in by_video],
        config.materialize.videos_per_shard,
    )
    summary.parts = len(groups)
    todo = []
    for part, group in enumerate(groups):
        files = [by_video[video.video_id] for video in group]
        marker = feature_stats_path(fingerprint, part)
        done = json.loads(root.read_text(marker)) if root.exists(marker) else None
        if done is not None and done["source_fingerprints"] == _sources(files):
            summary.skipped += 1
        else:
            todo.append((part, files))
    removed = remove_feature_parts(root, fingerprint, len(groups))
    if todo or removed or _lineage_changed(root, fingerprint, lineage):
        root.write_text(lineage_path(fingerprint), json.dumps(lineage, indent=1))
    if todo:
        written = _write_parts(source, root, fingerprint, timing, todo, summary.failed_videos)
        summary.progress_line += "\n" + written
        summary.written = len(todo)
    return summary


def _sources(files: list[CheckedFile]) -> dict[str, str]:
    """A part's source fingerprints: video_id -> its file's SHA-256."""
    return {file.video_id: file.digest for file in files}


def _lineage_changed(root: Store, fingerprint: str, lineage: Mapping[str, Any]) -> bool:
    """Whether the lineage on record differs from `lineage` in more than the command."""
    path = lineage_path(fingerprint)
    if not root.exists(path):
        return True
    recorded = json.loads(root.read_text(path))
    return {**recorded, "command": ""} != {**lineage, "command": ""}


def _write_parts(
    source: Store,
    root: Store,
    fingerprint: str,
    timing: SnippetTiming,
    todo: list[tuple[int, list[CheckedFile]]],
    failed: int,
) -> str:
    """Writes each part of `todo` from its files, read again, and records the stage (with
    `failed` videos); returns the progress line."""
    snippets = 0
    with Progress("import", sum(len(files) for _, files in todo)) as progress:
        for part, files in todo:
            rows = []
            for file in files:
                data = source.read_bytes(file.name)
                if hashlib.sha256(data).hexdigest() != file.digest:
                    raise InputError(
                        f"{source.url_of(file.name)} changed while it was imported: run again"
                    )
                values = read_feature_array(data, file.name)
                values = values.T.copy() if file.transposed else values
                start, end = timing.spans(len(values))
                video = EncodedVideo(file.video_id, values, start, end, timing.frames)
                rows.append(video.row(fingerprint, file.digest))
                progress.done()
            write_feature_part(root, fingerprint, part, rows, IMPORTED, _sources(files), {})
            snippets += sum(file.snippets for file in files)
    record_stage(root, f"import {fingerprint}", progress.seconds, progress.ok, snippets, failed)
    return progress.summary()
