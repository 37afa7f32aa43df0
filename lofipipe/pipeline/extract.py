"""The extract graph: committed snippet shards -> a Ray Data pool of encoder actors ->
features/<fingerprint>/, incrementally."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray
import torch

from lofipipe import __version__
from lofipipe.errors import ConfigError, InputError
from lofipipe.models.registry import ENCODERS, Encoder, build_encoder, encoder_fingerprint
from lofipipe.models.weights import load_weights, read_checkpoint
from lofipipe.pipeline.features import LINEAGE, FeatureExtractor, part_stats_path
from lofipipe.pipeline.snippet_reader import SnippetReader
from lofipipe.progress import Progress
from lofipipe.schemas.config import Config, config_to_dict
from lofipipe.schemas.schedule import load_schedule
from lofipipe.storage import Store, redact
from lofipipe.workers.runtime import cluster_cpus, ensure_ray


def build_weighted_encoder(name: str, losa: bool, checkpoint: str | None,
                           options: Mapping[str, Any], seed: int) -> Encoder:
    """The encoder with its checkpoint's weights, or random ones drawn from `seed`."""
    torch.manual_seed(seed)
    encoder = build_encoder(name, losa)
    if checkpoint:
        _load(encoder, read_checkpoint(checkpoint, options)[0], checkpoint, losa)
    return encoder


def _load(encoder: Encoder, state, checkpoint: str, losa: bool) -> None:
    label = checkpoint.rsplit("/", 1)[-1]
    try:
        load_weights(encoder.net, state, label)
    except InputError:
        if not losa:
            raise
        load_weights(encoder.net.backbone, state, label)  # backbone-only weights


@dataclass
class ExtractSummary:
    fingerprint: str
    parts: int = 0
    written: int = 0
    skipped: int = 0
    videos: int = 0
    random_weights: bool = False
    progress_line: str = ""

    def lines(self, root: Store) -> list[str]:
        out = []
        if self.random_weights:
            out.append("WARNING: no checkpoint given: these features come from RANDOM weights")
        out.append(f"features {self.fingerprint}: {self.parts} parts ({self.written} written, "
                   f"{self.skipped} already done), {self.videos} videos, under "
                   f"{root.url_of('features/' + self.fingerprint)}")
        return out


class _ExtractActor:
    """Hosts one extractor (and so one loaded model) in a Ray actor."""

    def __init__(self, extractor: FeatureExtractor, threads: int):
        # Ray pins a worker to one thread unless told; an actor gets the CPUs it holds.
        torch.set_num_threads(threads)
        self.extractor = extractor

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"stats": json.dumps(self.extractor.process(row["shard"]))}


def run_extract(config: Config, root: Store, storage_options: Mapping[str, Any],
                command: str) -> ExtractSummary:
    """Extracts features of every committed full-fidelity shard not yet done for this
    encoder fingerprint."""
    settings = config.extract
    if settings.encoder not in ENCODERS:
        raise ConfigError(f"extract.encoder: unknown encoder {settings.encoder!r} "
                          f"(known: {', '.join(ENCODERS)})")
    spec = ENCODERS[settings.encoder]
    schedule = load_schedule(config.materialize.schedule)
    fidelity = schedule.full
    if fidelity.frames != spec.frames:
        raise ConfigError(f"{spec.name} takes {spec.frames}-frame snippets, the {schedule.name} "
                          f"schedule's full fidelity has {fidelity.frames}")
    if settings.checkpoint:
        state, digest = read_checkpoint(settings.checkpoint, storage_options)
        with torch.device("meta"):  # checks names and shapes without the memory
            _load(build_encoder(spec.name, settings.losa), state, settings.checkpoint,
                  settings.losa)
        weights = f"sha256:{digest}"
    else:
        weights = f"random:seed={settings.seed}"
    name = spec.name + ("+losa" if settings.losa else "")
    preprocessing = {**config_to_dict(fidelity), "sampling": schedule.sampling,
                     "fps": schedule.fps, "stride": schedule.stride, "losa": settings.losa}
    fingerprint = encoder_fingerprint(spec, weights, preprocessing)
    reader = SnippetReader(root, fidelity.name)
    shards = reader.shards()
    summary = ExtractSummary(fingerprint, parts=len(shards), random_weights=not
                             settings.checkpoint)
    todo = []
    for shard in shards:
        part = int(shard.rsplit("part-", 1)[1][:5])
        marker = part_stats_path(fingerprint, part)
        shard_stats = json.loads(root.read_text(shard.replace(".parquet", ".stats.json")))
        if root.exists(marker) and json.loads(root.read_text(marker))[
                "source_fingerprints"] == shard_stats["source_fingerprints"]:
            summary.skipped += 1
            summary.videos += len(shard_stats["videos"])
        else:
            todo.append((shard, len(shard_stats["videos"])))
    root.write_text(f"features/{fingerprint}/{LINEAGE}", json.dumps({
        "fingerprint": fingerprint, "encoder": name, "weights": weights,
        "checkpoint": redact(settings.checkpoint or "", storage_options) or None,
        "schedule": schedule.name, "fidelity": preprocessing, "mean": spec.mean,
        "std": spec.std, "lofipipe_version": __version__, "command": command}, indent=1))
    if todo:
        ensure_ray(config.ray)
        factory = functools.partial(build_weighted_encoder, spec.name, settings.losa,
                                    settings.checkpoint, dict(storage_options), settings.seed)
        extractor = FeatureExtractor(root, fidelity.name, factory, fingerprint,
                                     settings.batch_size, settings.export, storage_options)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = min(settings.workers or gpus or cluster_cpus(), len(todo))
        cpus = 1 if gpus else max(1, cluster_cpus() // actors)
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        items = [{"shard": shard} for shard, _ in todo]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map(
            _ExtractActor, fn_constructor_args=(extractor, cpus),
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else 0, num_cpus=cpus)
        with Progress("extract", sum(count for _, count in todo)) as progress:
            for row in dataset.iter_rows():
                stats = json.loads(row["stats"])
                progress.done(count=stats["rows"])
                summary.written += 1
                summary.videos += stats["rows"]
        summary.progress_line = progress.summary()
    return summary


def list_features(root: Store) -> list[dict[str, Any]]:
    """Each fingerprint's lineage with its video count and bytes."""
    out = []
    for name in root.list("features", pattern=LINEAGE, recursive=True):
        folder = name.rsplit("/", 1)[0]
        lineage = json.loads(root.read_text(name))
        parts = root.list_detailed(folder, pattern="part-*")
        videos = sum(len(json.loads(root.read_text(p))["videos"]) for p, _ in parts
                     if p.endswith(".stats.json"))
        out.append({**lineage, "videos": videos,
                    "bytes": sum(int(info.get("size", 0)) for _, info in parts)})
    return out
