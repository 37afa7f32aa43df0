"""The train graph: a Ray Train (`TorchTrainer`) job of data-parallel workers, each
running a `training.trainer.Trainer` on its slice of every global batch.

Checkpoints, metrics, predictions and the report go to `ROOT/runs/<run>/` on any storage.
A worker that dies restarts the worker group from the newest checkpoint (`FailureConfig`),
and rerunning the same command resumes the run the same way; the resolved config saved in
`runs/<run>/config.yaml` must then still agree on everything that shapes the result.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from lofipipe.data.annotations import AnnotationIndex
from lofipipe.data.runs import read_metrics
from lofipipe.data.snippets import SnippetReader
from lofipipe.data.stage_log import record_stage
from lofipipe.errors import ConfigError, InputError
from lofipipe.evaluation.baseline import baseline_result
from lofipipe.evaluation.detection import (
    DetectionResult,
    evaluate,
    map_table,
    parse_thresholds,
)
from lofipipe.evaluation.files import parse_predictions
from lofipipe.evaluation.ground_truth import ground_truth
from lofipipe.layout import evaluation_path, predictions_path, report_path, run_config_path, run_dir
from lofipipe.models.precision import resolve_precision
from lofipipe.models.registry import ENCODERS, build_encoder, encoder_preprocess
from lofipipe.pipeline.progress import Progress
from lofipipe.reports.run_page import write_run_page
from lofipipe.schemas.config import Config, config_to_dict, config_to_yaml
from lofipipe.schemas.schedule import load_schedule
from lofipipe.storage import Store
from lofipipe.training.checkpoints import latest_epoch
from lofipipe.training.feature_set import FeatureSet
from lofipipe.training.trainer import TrainJob
from lofipipe.workers.runtime import cluster_cpus, ensure_ray, use_gpus
from lofipipe.workers.train_worker import torch_trainer

_SHOWN = ("epoch", "resume")  # the metrics rows the progress shows
# Settings a resumed run may change: they do not alter what it computes.
# H.264 decodes to the same pixels on a CPU and on a GPU: a run may switch decoders.
_RESUMABLE_CHANGES = {
    "workers",
    "max_failures",
    "keep_checkpoints",
    "prefetch_batches",
    "shard_decoder",
}


@dataclass
class TrainSummary:
    run: str
    epochs: int
    resumed_from: int
    workers: int
    seconds: float
    table: str
    baseline: DetectionResult
    result: DetectionResult  # the final predictions on the validation subset
    progress_line: str = ""
    failed_videos: int = 0  # training reads what earlier stages made of the ok videos

    def lines(self, root: Store) -> list[str]:
        first = self.baseline.thresholds[0]
        return [
            f"run {self.run}: {self.epochs} epochs on {self.workers} workers in "
            f"{self.seconds:.1f} s"
            + (f" (resumed after epoch {self.resumed_from})" if self.resumed_from else ""),
            "validation mAP (%) after the last epoch:",
            self.table,
            f"trivial baseline (class priors at every position, no features): "
            f"mAP@{first:.2f} {100 * self.baseline.mAP[0]:.2f}, average "
            f"{100 * self.baseline.average_mAP:.2f}",
            f"checkpoints, metrics.parquet, predictions.json and evaluation.json under "
            f"{root.url_of(run_dir(self.run))}",
            f"report: {root.url_of(report_path(self.run))}",
        ]


def _check_resume(root: Store, config: Config) -> None:
    saved_path = run_config_path(config.train.run)
    if not root.exists(saved_path):
        return
    saved = (yaml.safe_load(root.read_text(saved_path)) or {}).get("train", {})
    current = config_to_dict(config.train)
    # A setting the saved config lacks is newer than the run: it was never set otherwise.
    changed = sorted(
        k for k in current if k not in _RESUMABLE_CHANGES and k in saved and saved[k] != current[k]
    )
    if changed:
        raise ConfigError(
            f"run {config.train.run!r} exists with other settings "
            f"({', '.join(f'train.{k}' for k in changed)}): resume it with "
            f"its own settings, or choose a new --run name"
        )


def _head_inputs(config: Config, root: Store) -> tuple[AnnotationIndex, set[str], int]:
    """Head mode: the feature set's annotations, videos and window."""
    settings = config.train
    if not settings.features:
        raise ConfigError(
            f"train.features: name the feature fingerprint (--features; "
            f"lofipipe features {root.url} lists them)"
        )
    data = FeatureSet(root, settings.features)
    schedule = data.schedule
    window = settings.head.window or schedule.full.snippets
    return data.annotations, set(data.index), window if schedule.sampling == "stride" else 0


def _snippet_inputs(config: Config, root: Store) -> tuple[AnnotationIndex, set[str], int]:
    """LoFi and LoSA modes: the videos with shards at every fidelity the mode trains on
    (LoFi: the schedule's reduced ones; LoSA: the full one), made with the spatial
    preprocessing of `materialize.preprocess` (`auto`: the preset of `train.encoder`)."""
    schedule = load_schedule(config.materialize.schedule)
    losa = config.train.mode == "losa"
    workers = config.train.workers
    small = [
        f"{f.name} ({schedule.batch_size_for(f)})"
        for f in schedule.training_fidelities(config.train.mode)
        if config.train.mode == "lofi" and schedule.batch_size_for(f) < workers
    ]
    if small:
        raise ConfigError(
            f"the {schedule.name} schedule's batches at {', '.join(small)} are smaller than "
            f"the {workers} workers, and each worker takes at least one video a step: "
            f"plan them for {workers} workers (lofipipe plan --workers {workers} --write) "
            f"or train with fewer"
        )
    with torch.device("meta"):  # unknown names and LoSA on a non-ViT are config errors
        build_encoder(config.train.encoder, losa)
    preprocess = encoder_preprocess(config.train.encoder, config.materialize.preprocess)
    if ENCODERS[config.train.encoder].frames != schedule.full.frames:
        raise ConfigError(
            f"{config.train.encoder} takes {ENCODERS[config.train.encoder].frames}"
            f"-frame snippets, the {schedule.name} schedule has "
            f"{schedule.full.frames}"
        )
    videos = None
    for fidelity in schedule.training_fidelities(config.train.mode):
        committed = SnippetReader(root, fidelity.name).check_schedule(schedule, preprocess)
        encodings = {record["lineage"]["encoding"] for _, record in committed}
        if config.train.shard_decoder == "gpu" and encodings != {"h264"}:
            raise ConfigError(
                f"train.shard_decoder: only h264 shards decode on a GPU, and the "
                f"{fidelity.name} shards store {', '.join(sorted(encodings - {'h264'}))} "
                f"frames (decode them on the cpu, or materialize again with --encoding h264)"
            )
        found = {video for _, record in committed for video in record["videos"]}
        videos = found if videos is None else videos & found
    validation = schedule.validation_fidelity(config.train.mode)
    window = validation.snippets if schedule.sampling == "stride" else 0
    return AnnotationIndex(root), videos or set(), window


def run_train(
    config: Config, root: Store, storage_options: Mapping[str, Any], command: str
) -> TrainSummary:
    """Trains (or resumes) run `config.train.run` on Ray Train workers."""
    settings = config.train
    if not settings.run:
        raise ConfigError("train.run: name the run (--run NAME)")
    inputs = _head_inputs if settings.mode == "head" else _snippet_inputs
    annotations, available, window = inputs(config, root)
    if not annotations.label_names:
        raise InputError(f"no annotations under {root.url}: run lofipipe ingest with --annotations")
    train_videos, val_videos = (
        [v for v in annotations.videos(subset) if v in available]
        for subset in (settings.train_subset, settings.val_subset)
    )
    for subset, videos in (
        (settings.train_subset, train_videos),
        (settings.val_subset, val_videos),
    ):
        if len(videos) < settings.workers:
            raise InputError(
                f"{len(videos)} annotated videos of subset {subset!r} have "
                f"{'features' if settings.mode == 'head' else 'shards'}, fewer "
                f"than the {settings.workers} workers"
            )
    thresholds = parse_thresholds(settings.tiou)
    ensure_ray(config.ray)
    gpus = use_gpus(config.ray.gpus)
    if settings.mode != "head" and settings.shard_decoder == "gpu" and not gpus:
        raise ConfigError(
            "train.shard_decoder is gpu, but the workers train on CPUs (ray.gpus is off or "
            "the cluster has no GPUs): decode on the cpu"
        )
    if settings.mode != "head":  # the encoder's precision, as the run's config records it
        precision = resolve_precision(settings.precision, gpus)
        settings = dataclasses.replace(settings, precision=precision)
        config = dataclasses.replace(config, train=settings)
    _check_resume(root, config)
    root.write_text(run_config_path(settings.run), config_to_yaml(config, command))
    done = latest_epoch(root, settings.run)
    started = time.monotonic()
    if done < settings.epochs or not root.exists(predictions_path(settings.run)):
        _train_on_ray(config, root, train_videos, val_videos, thresholds, window, gpus)
        record_stage(
            root,
            f"train {settings.run}",
            time.monotonic() - started,
            len(train_videos) * (settings.epochs - done),
        )
    last = read_metrics(root, settings.run, kinds=("epoch",))[-1]
    if not root.exists(predictions_path(settings.run)):
        raise InputError(f"run {settings.run} ended without its predictions")
    result = _evaluate_run(root, settings.run, annotations, settings.val_subset, thresholds)
    write_run_page(root, settings.run)
    baseline = baseline_result(annotations, train_videos, val_videos, thresholds)
    return TrainSummary(
        settings.run,
        settings.epochs,
        done,
        settings.workers,
        time.monotonic() - started,
        map_table(thresholds, last["val_map"]),
        baseline,
        result,
    )


def _evaluate_run(
    root: Store, run: str, annotations: AnnotationIndex, subset: str, thresholds: tuple[float, ...]
) -> DetectionResult:
    """The run's predictions scored against the annotations of `subset`, saved as
    runs/<run>/evaluation.json."""
    predictions = parse_predictions(root.read_text(predictions_path(run)), predictions_path(run))
    result = evaluate(
        ground_truth(annotations, annotations.videos(subset)), predictions, thresholds
    )
    root.write_text(evaluation_path(run), json.dumps(result.to_dict(), indent=1))
    return result


def _train_on_ray(
    config: Config,
    root: Store,
    train_videos: list[str],
    val_videos: list[str],
    thresholds: tuple[float, ...],
    window: int,
    gpus: bool,
) -> None:
    settings = config.train
    threads = max(1, cluster_cpus() // settings.workers)
    schedule = preprocess = None
    if settings.mode != "head":
        schedule = load_schedule(config.materialize.schedule)
        preprocess = encoder_preprocess(settings.encoder, config.materialize.preprocess)
    job = TrainJob(
        root,
        settings.run,
        settings,
        train_videos,
        val_videos,
        thresholds,
        window,
        1 if gpus else threads,
        schedule,
        preprocess,
    )
    _fit(job, gpus, threads)


def _fit(job: TrainJob, use_gpu: bool, threads: int) -> None:
    """Runs the TorchTrainer while showing epochs done from the run's metrics."""
    settings = job.settings
    trainer = torch_trainer(job, use_gpu, threads)
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
            failure.append(error)

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    with Progress("train", settings.epochs, unit="epoch") as progress:
        rows = read_metrics(job.root, job.run, kinds=_SHOWN)
        seen = len(rows)
        progress.done(count=sum(row["kind"] == "epoch" for row in rows))
        while thread.is_alive():
            thread.join(timeout=2.0)
            rows = read_metrics(job.root, job.run, kinds=_SHOWN)
            for row in rows[seen:]:
                if row["kind"] == "resume":
                    progress.write(
                        f"worker group restarted: resumed after epoch "
                        f"{row['epoch']} from its checkpoint"
                    )
                    continue
                progress.write(
                    f"epoch {row['epoch']}/{settings.epochs}: loss {row['loss']:.4f}, val "
                    f"mAP@{job.thresholds[0]:.2f} {100 * row['val_map'][0]:5.2f}, average "
                    f"{100 * row['val_average_map']:5.2f} ({row['seconds']:.1f} s)"
                )
                progress.done()
            seen = max(seen, len(rows))
    if failure:
        raise InputError(
            f"training run {job.run} failed: {str(failure[0]).strip().splitlines()[-1]}"
        ) from None
