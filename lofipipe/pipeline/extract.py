"""The extract graph: committed snippet shards (or the manifest's videos, decoded) -> a Ray
Data pool of encoder actors -> features/<fingerprint>/, incrementally.

The preprocessing (`materialize.preprocess`, `auto`: the encoder's preset) is part of the
fingerprint: its spatial part must be the one the shards were made with (or is applied
while decoding videos), its normalization is the encoder's."""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray.util import ActorPool

from lofipipe import __version__
from lofipipe.data.manifest import ok_videos, shard_groups
from lofipipe.data.snippets import SnippetReader
from lofipipe.data.stage_log import record_stage
from lofipipe.errors import ConfigError, failure_reason
from lofipipe.layout import (
    feature_dir,
    feature_stats_path,
    lineage_path,
)
from lofipipe.models.precision import resolve_precision
from lofipipe.models.registry import (
    ENCODERS,
    LOSA_SUFFIX,
    architecture_digest,
    build_encoder,
    encoder_fingerprint,
    encoder_preprocess,
)
from lofipipe.models.weights import build_weighted_encoder, load_encoder_checkpoint
from lofipipe.pipeline.progress import Progress
from lofipipe.schemas.config import Config
from lofipipe.schemas.preprocess import Preprocess
from lofipipe.schemas.schedule import Schedule, load_schedule
from lofipipe.storage import Store, redact
from lofipipe.workers.feature_extractor import (
    ExtractActor,
    FeatureExtractor,
    PartJob,
    remove_feature_parts,
)
from lofipipe.workers.runtime import cluster_cpus, cluster_gpus, ensure_ray, use_gpus


@dataclass
class ExtractSummary:
    fingerprint: str
    source: str
    parts: int = 0
    written: int = 0
    skipped: int = 0
    videos: int = 0
    failed: Counter = field(default_factory=Counter)
    failed_reasons: dict[str, str] = field(default_factory=dict)  # video_id -> reason
    random_weights: bool = False
    checkpoint_layout: str | None = None  # as `checkpoint_layouts.py` names it
    progress_line: str = ""

    def add(self, stats: Mapping[str, Any]) -> None:
        self.videos += len(stats["videos"])
        reasons = {video: failure_reason(line) for video, line in stats["failed"].items()}
        self.failed_reasons.update(reasons)
        self.failed.update(reasons.values())

    @property
    def failed_videos(self) -> int:
        return sum(self.failed.values())

    def lines(self, root: Store) -> list[str]:
        out = []
        if self.random_weights:
            out.append("WARNING: no checkpoint given: these features come from RANDOM weights")
        if self.checkpoint_layout:
            out.append(f"checkpoint read as {self.checkpoint_layout}")
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.failed.items()))
        out.append(
            f"features {self.fingerprint}: {self.parts} parts from {self.source} "
            f"({self.written} written, {self.skipped} already done), {self.videos} "
            f"videos, {failed} failed"
            + (f" ({reasons})" if reasons else "")
            + f", under {root.url_of(feature_dir(self.fingerprint))}"
        )
        return out


def _plan_parts(
    config: Config, root: Store, schedule: Schedule, preprocess: Preprocess
) -> tuple[list[PartJob], dict[int, dict[str, str]], str]:
    """Every part's job and source fingerprints, and how its pixels were stored."""
    if config.extract.source == "videos":
        groups = shard_groups(ok_videos(root), config.materialize.videos_per_shard)
        jobs = [PartJob(part, group) for part, group in enumerate(groups)]
        return (
            jobs,
            {job.part: {v.video_id: v.fingerprint for v in job.videos} for job in jobs},
            "raw",
        )
    jobs, sources, encodings = [], {}, set()
    reader = SnippetReader(root, schedule.full.name)
    for shard, stats in reader.check_schedule(schedule, preprocess):
        jobs.append(PartJob(stats["shard"], shard=shard))
        sources[stats["shard"]] = stats["source_fingerprints"]
        encodings.add(stats["lineage"]["encoding"])
    return jobs, sources, "+".join(sorted(encodings))


def _check_gpu_decoding(source: str, gpus: bool, pixels: str) -> None:
    """extract.shard_decoder gpu: refused unless GPU actors read h264 shards."""
    if source != "shards":
        raise ConfigError(
            "extract.shard_decoder is gpu, which decodes shards; --from videos decodes "
            "the source videos on the CPU"
        )
    if not gpus:
        raise ConfigError(
            "extract.shard_decoder is gpu, but the encoder actors run on CPUs (ray.gpus is "
            "off or the cluster has no GPUs): decode on the cpu"
        )
    if pixels != "h264":
        raise ConfigError(
            f"extract.shard_decoder: only h264 shards decode on a GPU, and the full shards "
            f"store {pixels} frames (decode them on the cpu, or materialize again with "
            f"--encoding h264)"
        )


@dataclass
class ExtractPlan:
    """What `run_extract` will do: the fingerprint, its lineage, the parts still to write."""

    schedule: Schedule
    preprocess: Preprocess
    fingerprint: str
    lineage: dict[str, Any]
    jobs: list[PartJob]
    todo: list[PartJob]
    sources: dict[int, dict[str, str]]
    summary: ExtractSummary
    gpus: bool  # whether the encoder actors take GPUs (ray.gpus)
    precision: str  # extract.precision, resolved: fp32, bf16 or fp16


def plan_extract(
    config: Config, root: Store, storage_options: Mapping[str, Any], command: str = ""
) -> ExtractPlan:
    """Checks the encoder, schedule and checkpoint, and finds the parts not yet done for
    this encoder fingerprint (nothing is written). Ray is started or joined first: whether
    the actors get GPUs decides the precision, which the fingerprint holds."""
    settings = config.extract
    ensure_ray(config.ray)
    gpus = use_gpus(config.ray.gpus)
    precision = resolve_precision(settings.precision, gpus)
    if settings.encoder not in ENCODERS:
        raise ConfigError(
            f"extract.encoder: unknown encoder {settings.encoder!r} (known: {', '.join(ENCODERS)})"
        )
    spec = ENCODERS[settings.encoder]
    preprocess = encoder_preprocess(spec.name, config.materialize.preprocess)
    schedule = load_schedule(config.materialize.schedule)
    fidelity = schedule.full
    if fidelity.frames != spec.frames:
        raise ConfigError(
            f"{spec.name} takes {spec.frames}-frame snippets, the {schedule.name} "
            f"schedule's full fidelity has {fidelity.frames}"
        )
    with torch.device("meta"):  # names and shapes without the memory
        skeleton = build_encoder(spec.name, settings.losa, preprocess)
    if settings.checkpoint:
        converted, digest = load_encoder_checkpoint(
            skeleton, settings.checkpoint, storage_options, settings.losa
        )
        weights, layout = f"sha256:{digest}", converted.name
    else:
        weights, layout = f"random:seed={settings.seed}", None
    jobs, sources, pixels = _plan_parts(config, root, schedule, preprocess)
    if settings.shard_decoder == "gpu":
        _check_gpu_decoding(settings.source, gpus, pixels)
    name = spec.name + (LOSA_SUFFIX if settings.losa else "")
    # Decoded videos give the very pixels raw shards hold, so both share a fingerprint.
    preprocessing = {
        **fidelity.content,
        "sampling": schedule.sampling,
        "fps": schedule.fps,
        "stride": schedule.stride,
        "losa": settings.losa,
        "pixels": pixels,
        # fp32 features keep the fingerprints they had before precision was a setting
        **({"precision": precision} if precision != "fp32" else {}),
    }
    pixel_preprocess = preprocess.content(spec.mean, spec.std)
    fingerprint = encoder_fingerprint(
        spec, weights, preprocessing, architecture_digest(skeleton), pixel_preprocess
    )
    summary = ExtractSummary(
        fingerprint,
        settings.source,
        parts=len(jobs),
        random_weights=not settings.checkpoint,
        checkpoint_layout=layout,
    )
    todo = []
    for job in jobs:
        marker = feature_stats_path(fingerprint, job.part)
        done = json.loads(root.read_text(marker)) if root.exists(marker) else None
        if done is not None and done["source_fingerprints"] == sources[job.part]:
            summary.skipped += 1
            summary.add(done)
        else:
            todo.append(job)
    lineage = {
        "fingerprint": fingerprint,
        "encoder": name,
        "weights": weights,
        "precision": precision,
        "checkpoint": redact(settings.checkpoint or "", storage_options) or None,
        "checkpoint_layout": layout,
        "schedule": schedule.name,
        "schedule_spec": schedule.record(),  # every field: head training rebuilds it
        "fidelity": preprocessing,
        "preprocess": pixel_preprocess,
        "mean": pixel_preprocess["mean"],
        "std": pixel_preprocess["std"],
        "lofipipe_version": __version__,
        "command": command,
    }
    return ExtractPlan(
        schedule, preprocess, fingerprint, lineage, jobs, todo, sources, summary, gpus, precision
    )


def run_extract(
    config: Config, root: Store, storage_options: Mapping[str, Any], command: str
) -> ExtractSummary:
    """Extracts features of every part (a shard's videos) not yet done for this encoder
    fingerprint, from the full-fidelity shards or by decoding the videos."""
    plan = plan_extract(config, root, storage_options, command)
    fingerprint, summary = plan.fingerprint, plan.summary
    root.write_text(lineage_path(fingerprint), json.dumps(plan.lineage, indent=1))
    remove_feature_parts(root, fingerprint, max((job.part + 1 for job in plan.jobs), default=0))
    if plan.todo:
        summary.progress_line = _run_jobs(config, root, storage_options, plan)
    return summary


def _run_jobs(
    config: Config, root: Store, storage_options: Mapping[str, Any], plan: ExtractPlan
) -> str:
    settings, summary, todo = config.extract, plan.summary, plan.todo
    factory = functools.partial(
        build_weighted_encoder,
        settings.encoder,
        settings.losa,
        settings.checkpoint,
        dict(storage_options),
        settings.seed,
        plan.preprocess,
    )
    extractor = FeatureExtractor(
        root,
        plan.schedule,
        factory,
        plan.fingerprint,
        settings.batch_size,
        settings.export,
        config.materialize.decode_threads,
        storage_options,
        plan.preprocess,
        plan.precision,
        shard_decoder=settings.shard_decoder,
    )
    # One actor per GPU the cluster has or can start (an autoscaler starts GPU nodes for
    # actors that ask for one), else one per CPU.
    actors = min(settings.workers or (cluster_gpus() if plan.gpus else cluster_cpus()), len(todo))
    cpus = 1 if plan.gpus else max(1, cluster_cpus() // actors)
    # A killed actor is started again and its part runs again (a part commits by its
    # marker, so a rerun writes the same files). Constructor arguments stay small (no
    # weights: each actor reads its checkpoint), so Ray passes them inline.
    actor = ray.remote(ExtractActor).options(
        num_cpus=cpus, num_gpus=1 if plan.gpus else 0, max_restarts=-1, max_task_retries=-1
    )
    pool = ActorPool([actor.remote(extractor, cpus) for _ in range(actors)])
    parts = pool.map_unordered(
        lambda extract, job: extract.process.options(name="lofipipe.extract").remote(job), todo
    )
    snippets = 0
    with Progress("extract", sum(len(plan.sources[job.part]) for job in todo)) as progress:
        for stats in parts:
            snippets += stats["snippets"]
            summary.written += 1
            summary.add(stats)
            progress.done(count=len(stats["videos"]))
            for error in stats["failed"].values():
                progress.done(failed_reason=failure_reason(error))
    record_stage(
        root,
        f"extract {plan.fingerprint}",
        progress.seconds,
        progress.ok,
        snippets,
        progress.failed,
    )
    return progress.summary()
