"""The materialize graph: manifest -> time-limited shard tasks on Ray -> shards per fidelity.

Videos that probed fine are assigned to shard indexes in video_id order,
`videos_per_shard` each; one task per shard index decodes its videos once and writes that
index for every fidelity. A shard is skipped on rerun when its stats (the commit marker)
show the same videos, fingerprints, fidelity settings and spatial preprocessing;
`retry_failed` also redoes shards that recorded failed videos, `force` redoes everything.

A shard task that crashes or runs past its time limit runs again, and the video it died on
is quarantined after `materialize.max_attempts` such deaths (see quarantine.py): one bad
video never stops the job, and the retries are bounded.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lofipipe.data.manifest import SourceVideo, ok_videos, shard_groups
from lofipipe.data.stage_log import record_stage
from lofipipe.errors import failure_reason
from lofipipe.layout import (
    MATERIALIZE_CONFIG_PATH,
    SCHEDULE_PATH,
    SHARDS_DIR,
    STATS_PATTERN,
    part_number,
    shard_dir,
    shard_path,
    shard_stats_path,
)
from lofipipe.media.frame_codec import FrameCodec
from lofipipe.models.registry import encoder_preprocess
from lofipipe.pipeline.progress import Progress
from lofipipe.schemas.config import Config, MaterializeConfig, config_to_dict, config_to_yaml
from lofipipe.schemas.preprocess import Preprocess
from lofipipe.schemas.schedule import Schedule, load_schedule, snippet_content
from lofipipe.storage import Store
from lofipipe.workers.quarantine import attempt_bound, forget_journals
from lofipipe.workers.runtime import ensure_ray
from lofipipe.workers.shard_writer import ShardJob, ShardWriter
from lofipipe.workers.task_pool import TaskFailure, map_with_time_limit


@dataclass
class FidelitySummary:
    shards: int = 0
    written: int = 0
    skipped: int = 0
    videos: int = 0
    failed: Counter = field(default_factory=Counter)
    rows: int = 0
    bytes: int = 0

    def add(self, stats: Mapping[str, Any]) -> None:
        self.shards += 1
        self.videos += len(stats["videos"])
        self.failed.update(stats["failures"])
        self.rows += stats["rows"]
        self.bytes += stats["bytes"]


@dataclass
class MaterializeSummary:
    schedule: str
    fidelities: dict[str, FidelitySummary]
    abandoned: dict[int, str] = field(default_factory=dict)  # shard -> its last failure
    progress_line: str = ""

    @property
    def failed_videos(self) -> int:
        """A video fails at every fidelity of its shard: counted once."""
        return max((sum(f.failed.values()) for f in self.fidelities.values()), default=0) + len(
            self.abandoned
        )

    def lines(self, root: Store) -> list[str]:
        out = [f"schedule {self.schedule}: shards under {root.url_of(SHARDS_DIR)}"]
        out += [
            f"  shard {shard} not written (a rerun tries it again): {error}"
            for shard, error in sorted(self.abandoned.items())
        ]
        for name, f in self.fidelities.items():
            failed = sum(f.failed.values())
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(f.failed.items()))
            out.append(
                f"  {name}: {f.shards} shards ({f.written} written, {f.skipped} already "
                f"done), {f.videos} videos ok, {failed} failed"
                + (f" ({reasons})" if reasons else "")
                + f", {f.rows} snippets, {f.bytes / 2**20:.1f} MiB"
            )
        return out


def _read_stats(root: Store, fidelity: str, shard: int) -> dict[str, Any] | None:
    if not root.exists(shard_stats_path(fidelity, shard)):
        return None
    return json.loads(root.read_text(shard_stats_path(fidelity, shard)))


def materialize_preprocess(config: Config, encoder: str | None = None) -> Preprocess:
    """The preprocessing of snippets: `materialize.preprocess`, where `auto` means the
    preset of `encoder` (default `extract.encoder`; training passes `train.encoder`)."""
    return encoder_preprocess(encoder or config.extract.encoder, config.materialize.preprocess)


def frame_codec(settings: MaterializeConfig) -> FrameCodec:
    """How `settings` store snippet frames."""
    return FrameCodec(settings.encoding, settings.jpeg_quality, settings.crf, settings.x264_preset)


def plan_jobs(
    root: Store,
    schedule: Schedule,
    videos: list[SourceVideo],
    videos_per_shard: int,
    codec: FrameCodec,
    preprocess: Preprocess,
    force: bool = False,
    retry_failed: bool = False,
) -> tuple[list[ShardJob], dict[str, list[dict]]]:
    """The shard jobs still to run, and the stats of shards already done, per fidelity.

    A shard is done when its videos, fingerprints and `snippet_content` (the fidelity,
    its sampling and the spatial preprocessing) match.
    """
    jobs, done = [], {f.name: [] for f in schedule.fidelities}
    for shard, group in enumerate(shard_groups(videos, videos_per_shard)):
        fingerprints = {video.video_id: video.fingerprint for video in group}
        todo = []
        for fidelity in schedule.fidelities:
            stats = None if force else _read_stats(root, fidelity.name, shard)
            expected = snippet_content(
                schedule.lineage(
                    fidelity.name, codec.encoding, preprocess.spatial_content, codec.settings
                )
            )
            if (
                stats is not None
                and stats["source_fingerprints"] == fingerprints
                and snippet_content(stats["lineage"]) == expected
                and not (retry_failed and stats["failed"])
            ):
                done[fidelity.name].append(stats)
            else:
                todo.append(fidelity.name)
        if todo:
            jobs.append(ShardJob(shard, group, tuple(todo)))
    return jobs, done


def _remove_stale(root: Store, schedule: Schedule, shards: int) -> None:
    """Shards past the current count (the dataset shrank): marker first, then the data."""
    for fidelity in schedule.fidelities:
        for name in root.list(shard_dir(fidelity.name), pattern=STATS_PATTERN):
            shard = part_number(name)
            if shard >= shards:
                root.remove(shard_stats_path(fidelity.name, shard))
                root.remove(shard_path(fidelity.name, shard))


def _contained(
    stage: ShardWriter, jobs: list[ShardJob], settings: MaterializeConfig, progress: Progress
) -> Iterator[tuple[ShardJob, Any]]:
    """Runs the shard jobs as time-limited Ray tasks; a job whose task died or timed out
    runs again (see quarantine.py) until it commits or has had `attempt_bound` tries.
    Yields each job once, with its stats or, if it never committed, its last failure (a
    storage failure stops the stage with a StorageError instead)."""

    def limit(job: ShardJob) -> float:
        return sum(
            settings.video_timeout_s + settings.video_timeout_s_per_hour * video.duration / 3600
            for video in job.videos
        )

    tries: Counter[int] = Counter()
    todo = jobs
    while todo:
        again = []
        for job, outcome in map_with_time_limit(stage, todo, limit):
            if not isinstance(outcome, TaskFailure):
                yield job, outcome
                continue
            tries[job.shard] += 1
            if outcome.reason == "task_error" or tries[job.shard] >= attempt_bound(
                len(job.videos), settings.max_attempts
            ):
                yield job, outcome  # an exception in lofipipe itself: trying again won't help
                continue
            progress.write(f"shard {job.shard}: {outcome.message} ({outcome.reason}); trying again")
            again.append(dataclasses.replace(job, last_failure=outcome.line))
        todo = again


def run_materialize(
    config: Config,
    root: Store,
    storage_options: Mapping[str, Any],
    command: str,
    force: bool = False,
    retry_failed: bool = False,
) -> MaterializeSummary:
    """Materializes the shards of `config.materialize.schedule` for the manifest's videos,
    preprocessed as `materialize_preprocess(config)` says."""
    settings = config.materialize
    schedule = load_schedule(settings.schedule)
    preprocess = materialize_preprocess(config)
    codec = frame_codec(settings)
    videos = ok_videos(root)
    jobs, done = plan_jobs(
        root,
        schedule,
        videos,
        settings.videos_per_shard,
        codec,
        preprocess,
        force,
        retry_failed,
    )
    summary = MaterializeSummary(
        schedule.name, {f.name: FidelitySummary() for f in schedule.fidelities}
    )
    for name, records in done.items():
        for stats in records:
            summary.fidelities[name].add(stats)
            summary.fidelities[name].skipped += 1
    for fidelity in schedule.fidelities:
        root.clear_staged(shard_dir(fidelity.name))
    forget_journals(root, keep={job.shard for job in jobs})
    if jobs:
        ensure_ray(config.ray)
        stage = ShardWriter(
            schedule,
            root,
            codec,
            settings.decode_threads,
            storage_options,
            settings.max_attempts,
            preprocess,
        )
        snippets = 0
        with Progress("materialize", sum(len(job.videos) for job in jobs)) as progress:
            for job, outcome in _contained(stage, jobs, settings, progress):
                if isinstance(outcome, TaskFailure):  # gave up on the whole shard
                    summary.abandoned[job.shard] = outcome.message
                    progress.done(failed_reason="abandoned", count=len(job.videos))
                    continue
                snippets += sum(stats["rows"] for stats in outcome)
                for stats in outcome:
                    summary.fidelities[stats["fidelity"]].add(stats)
                    summary.fidelities[stats["fidelity"]].written += 1
                first = outcome[0]
                progress.done(count=len(first["videos"]))
                for error in first["failed"].values():
                    progress.done(failed_reason=failure_reason(error))
        summary.progress_line = progress.summary()
        record_stage(root, "materialize", progress.seconds, progress.ok, snippets, progress.failed)
    _remove_stale(root, schedule, -(-len(videos) // settings.videos_per_shard))
    root.write_text(SCHEDULE_PATH, json.dumps(config_to_dict(schedule), indent=1))
    root.write_text(MATERIALIZE_CONFIG_PATH, config_to_yaml(config, command))
    return summary
