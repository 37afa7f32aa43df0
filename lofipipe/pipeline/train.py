"""The train graph: a Ray Train (`TorchTrainer`) job of data-parallel workers, each
running a `training.trainer.Trainer` on its slice of every global batch.

Checkpoints, metrics, predictions and the report go to `ROOT/runs/<run>/` on any storage.
A worker that dies restarts the worker group from the newest checkpoint (`FailureConfig`),
and rerunning the same command resumes the run the same way; the resolved config saved in
`runs/<run>/config.yaml` must then still agree on everything that shapes the result.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray
import torch
import yaml

from lofipipe.errors import ConfigError, InputError
from lofipipe.evaluation.baseline import class_prior_baseline
from lofipipe.evaluation.detection import (
    DetectionResult,
    evaluate,
    map_table,
    parse_thresholds,
)
from lofipipe.evaluation.files import parse_predictions
from lofipipe.models.registry import ENCODERS, build_encoder
from lofipipe.pipeline.annotation_index import AnnotationIndex
from lofipipe.pipeline.run_page import run_page_path, write_run_page
from lofipipe.pipeline.shards import fidelity_lineage
from lofipipe.pipeline.snippet_reader import SnippetReader
from lofipipe.pipeline.stage_log import record_stage
from lofipipe.progress import Progress
from lofipipe.schemas.config import Config, config_to_dict, config_to_yaml
from lofipipe.schemas.schedule import load_schedule
from lofipipe.schemas.tables import METRICS
from lofipipe.storage import Store
from lofipipe.training.checkpoints import latest_epoch
from lofipipe.training.feature_set import FeatureSet
from lofipipe.training.head_trainer import HeadTrainer
from lofipipe.training.lofi_trainer import (
    LofiTrainer,
    LosaTrainer,
    training_fidelities,
    validation_fidelity,
)
from lofipipe.training.trainer import TrainJob, predictions_path
from lofipipe.workers.runtime import cluster_cpus, ensure_ray

# Settings a resumed run may change: they do not alter what it computes.
_RESUMABLE_CHANGES = {"workers", "max_failures", "keep_checkpoints"}


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

    def lines(self, root: Store) -> list[str]:
        first = self.baseline.thresholds[0]
        return [f"run {self.run}: {self.epochs} epochs on {self.workers} workers in "
                f"{self.seconds:.1f} s" + (f" (resumed after epoch {self.resumed_from})"
                                           if self.resumed_from else ""),
                "validation mAP (%) after the last epoch:", self.table,
                f"trivial baseline (class priors at every position, no features): "
                f"mAP@{first:.2f} {100 * self.baseline.mAP[0]:.2f}, average "
                f"{100 * self.baseline.average_mAP:.2f}",
                f"checkpoints, metrics.parquet, predictions.json and evaluation.json under "
                f"{root.url_of('runs/' + self.run)}",
                f"report: {root.url_of(run_page_path(self.run))}"]


def _worker(job: TrainJob) -> None:
    """Runs in each Ray Train worker."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    kind = {"head": HeadTrainer, "lofi": LofiTrainer, "losa": LosaTrainer}[job.settings.mode]
    trainer = kind(job, context.get_world_rank(), context.get_world_size(),
                   wrap=ray.train.torch.prepare_model, log=lambda line: None)
    trainer.run()  # the driver shows its epochs from the run's metrics


def _check_resume(root: Store, config: Config) -> None:
    saved_path = f"runs/{config.train.run}/config.yaml"
    if not root.exists(saved_path):
        return
    saved = (yaml.safe_load(root.read_text(saved_path)) or {}).get("train", {})
    current = config_to_dict(config.train)
    changed = sorted(k for k in current if k not in _RESUMABLE_CHANGES
                     and saved.get(k) != current[k])
    if changed:
        raise ConfigError(f"run {config.train.run!r} exists with other settings "
                          f"({', '.join(f'train.{k}' for k in changed)}): resume it with "
                          f"its own settings, or choose a new --run name")


def _head_inputs(config: Config, root: Store) -> tuple[AnnotationIndex, set[str], int]:
    """Head mode: the feature set's annotations, videos and window."""
    settings = config.train
    if not settings.features:
        raise ConfigError(f"train.features: name the feature fingerprint (--features; "
                          f"lofipipe features {root.url} lists them)")
    data = FeatureSet(root, settings.features)
    schedule = load_schedule(data.lineage["schedule"])
    window = settings.head.window or schedule.full.snippets
    return data.annotations, set(data.index), window if schedule.sampling == "stride" else 0


def _snippet_inputs(config: Config, root: Store) -> tuple[AnnotationIndex, set[str], int]:
    """LoFi and LoSA modes: the videos with shards at every fidelity the mode trains on
    (LoFi: the schedule's reduced ones; LoSA: the full one)."""
    schedule = load_schedule(config.materialize.schedule)
    losa = config.train.mode == "losa"
    with torch.device("meta"):  # unknown names and LoSA on a non-ViT are config errors
        build_encoder(config.train.encoder, losa)
    if ENCODERS[config.train.encoder].frames != schedule.full.frames:
        raise ConfigError(f"{config.train.encoder} takes {ENCODERS[config.train.encoder].frames}"
                          f"-frame snippets, the {schedule.name} schedule has "
                          f"{schedule.full.frames}")
    videos = None
    fidelities = training_fidelities(schedule, config.train.mode)
    for fidelity in fidelities:
        stats = SnippetReader(root, fidelity.name).stats()
        expected = json.loads(json.dumps(fidelity_lineage(schedule, fidelity.name, "")))
        for record in stats:
            if {**record["lineage"], "encoding": ""} != expected:
                raise ConfigError(f"the {fidelity.name} shards under {root.url} were "
                                  f"materialized for schedule {record['lineage']['schedule']!r},"
                                  f" not {schedule.name!r}: pass --schedule "
                                  f"{record['lineage']['schedule']}")
        found = {video for record in stats for video in record["videos"]}
        videos = found if videos is None else videos & found
    validation = validation_fidelity(fidelities)
    window = validation.snippets if schedule.sampling == "stride" else 0
    return AnnotationIndex(root), videos or set(), window


def run_train(config: Config, root: Store, storage_options: Mapping[str, Any],
              command: str) -> TrainSummary:
    """Trains (or resumes) run `config.train.run` on Ray Train workers."""
    settings = config.train
    if not settings.run:
        raise ConfigError("train.run: name the run (--run NAME)")
    inputs = _head_inputs if settings.mode == "head" else _snippet_inputs
    annotations, available, window = inputs(config, root)
    if not annotations.label_names:
        raise InputError(f"no annotations under {root.url}: run lofipipe ingest with "
                         f"--annotations")
    train_videos, val_videos = ([v for v in annotations.videos(subset) if v in available]
                                for subset in (settings.train_subset, settings.val_subset))
    for subset, videos in ((settings.train_subset, train_videos),
                           (settings.val_subset, val_videos)):
        if len(videos) < settings.workers:
            raise InputError(f"{len(videos)} annotated videos of subset {subset!r} have "
                             f"{'features' if settings.mode == 'head' else 'shards'}, fewer "
                             f"than the {settings.workers} workers")
    thresholds = parse_thresholds(settings.tiou)
    _check_resume(root, config)
    root.write_text(f"runs/{settings.run}/config.yaml", config_to_yaml(config, command))
    done = latest_epoch(root, settings.run)
    started = time.monotonic()
    if done < settings.epochs or not root.exists(predictions_path(settings.run)):
        _train_on_ray(config, root, train_videos, val_videos, thresholds, window)
        record_stage(root, f"train {settings.run}", time.monotonic() - started,
                     len(train_videos) * (settings.epochs - done))
    last = [r for r in _epoch_rows(root, settings.run) if r["kind"] == "epoch"][-1]
    if not root.exists(predictions_path(settings.run)):
        raise InputError(f"run {settings.run} ended without its predictions")
    result = _evaluate_run(root, settings.run, annotations, settings.val_subset, thresholds)
    write_run_page(root, settings.run)
    truth = annotations.ground_truth
    baseline = evaluate(truth(val_videos), class_prior_baseline(truth(train_videos), {
        v: (0.0, annotations.durations[v]) for v in val_videos}), thresholds)
    return TrainSummary(settings.run, settings.epochs, done, settings.workers,
                        time.monotonic() - started, map_table(thresholds, last["val_map"]),
                        baseline, result)


def _evaluate_run(root: Store, run: str, annotations: AnnotationIndex, subset: str,
                  thresholds: tuple[float, ...]) -> DetectionResult:
    """The run's predictions scored against the annotations of `subset`, saved as
    runs/<run>/evaluation.json."""
    predictions = parse_predictions(root.read_text(predictions_path(run)), predictions_path(run))
    result = evaluate(annotations.ground_truth(annotations.videos(subset)), predictions,
                      thresholds)
    root.write_text(f"runs/{run}/evaluation.json", json.dumps(result.to_dict(), indent=1))
    return result


def _train_on_ray(config: Config, root: Store, train_videos: list[str],
                  val_videos: list[str], thresholds: tuple[float, ...], window: int) -> None:
    settings = config.train
    ensure_ray(config.ray)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    threads = max(1, cluster_cpus() // settings.workers)
    job = TrainJob(root, settings.run, settings, train_videos, val_videos, thresholds, window,
                   1 if gpus else threads, config.materialize.schedule)
    _fit(job, gpus > 0, threads)


def _epoch_rows(root: Store, run: str) -> list[dict[str, Any]]:
    path = f"runs/{run}/metrics.parquet"
    if not root.exists(path):
        return []
    rows = METRICS.check(root.read_table(path), root.url_of(path)).to_pylist()
    return [r for r in rows if r["kind"] != "step"]


def _fit(job: TrainJob, use_gpu: bool, threads: int) -> None:
    """Runs the TorchTrainer while showing epochs done from the run's metrics."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    settings = job.settings
    trainer = TorchTrainer(
        lambda: _worker(job),
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else
                                     {"CPU": threads}),
        run_config=RunConfig(
            name=f"lofipipe-{job.run}-{os.getpid()}",
            # Ray keeps only its own run state here: lofipipe writes the checkpoints.
            storage_path=os.path.join(tempfile.gettempdir(), "lofipipe-ray-train"),
            failure_config=FailureConfig(max_failures=settings.max_failures),
            # Ray Train's INFO lines (process groups, DDP wrapping) and its warnings that
            # the state API is off (lofipipe starts Ray without the dashboard) are noise.
            logging_config=LoggingConfig(log_level="ERROR")))
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
            failure.append(error)

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    with Progress("train", settings.epochs, unit="epoch") as progress:
        rows = _epoch_rows(job.root, job.run)
        seen = len(rows)
        progress.done(count=sum(row["kind"] == "epoch" for row in rows))
        while thread.is_alive():
            thread.join(timeout=2.0)
            rows = _epoch_rows(job.root, job.run)
            for row in rows[seen:]:
                if row["kind"] == "resume":
                    progress.write(f"worker group restarted: resumed after epoch "
                                   f"{row['epoch']} from its checkpoint")
                    continue
                progress.write(
                    f"epoch {row['epoch']}/{settings.epochs}: loss {row['loss']:.4f}, val "
                    f"mAP@{job.thresholds[0]:.2f} {100 * row['val_map'][0]:5.2f}, average "
                    f"{100 * row['val_average_map']:5.2f} ({row['seconds']:.1f} s)")
                progress.done()
            seen = max(seen, len(rows))
    if failure:
        raise InputError(f"training run {job.run} failed: "
                         f"{str(failure[0]).strip().splitlines()[-1]}") from None
