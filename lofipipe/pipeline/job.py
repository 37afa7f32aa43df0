"""The whole graph as one job, from one recipe file: ingest -> materialize -> extract ->
train (head, lofi or losa) -> regenerate features -> evaluate.

Every step skips what is committed (ingest keeps unchanged videos, materialize and extract
skip parts whose markers match, training resumes from its newest checkpoint), so a rerun
after a crash or a killed driver continues where the job stopped and ends with the outputs
of an uninterrupted run. `plan_job` tells, without writing anything, what each step has
done and what it would still do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lofipipe.data.manifest import manifest_rows, ok_videos
from lofipipe.errors import ConfigError
from lofipipe.evaluation.detection import DetectionResult
from lofipipe.layout import (
    MANIFEST_PATH,
    encoder_path,
    evaluation_path,
    predictions_path,
    report_path,
)
from lofipipe.pipeline.extract import plan_extract, run_extract
from lofipipe.pipeline.ingest import is_unchanged, list_videos, run_ingest
from lofipipe.pipeline.materialize import (
    frame_codec,
    materialize_preprocess,
    plan_jobs,
    run_materialize,
)
from lofipipe.pipeline.recipe import run_lofi_recipe
from lofipipe.pipeline.train import run_train
from lofipipe.schemas.config import Config, config_with
from lofipipe.schemas.schedule import load_schedule
from lofipipe.schemas.stage import StageSummary
from lofipipe.storage import Store
from lofipipe.training.checkpoints import latest_epoch


def check_job(config: Config) -> None:
    job = config.job
    for key in ("root", "videos", "annotations"):
        if not getattr(job, key):
            raise ConfigError(f"job.{key}: the recipe must name it")
    if not config.train.run:
        raise ConfigError("train.run: the recipe must name the run")
    load_schedule(config.materialize.schedule)  # a bad schedule stops the job before work


def final_run(config: Config) -> str:
    """The run whose head is evaluated at the end."""
    return config.train.run if config.job.recipe == "head" else f"{config.train.run}-head"


def training_runs(config: Config) -> list[tuple[str, int]]:
    """(run name, epochs) of every training run the recipe makes, in order."""
    run, settings = config.train.run, config.train
    if config.job.recipe == "head":
        return [(run, settings.epochs)]
    first = f"{run}-lofi" if config.job.recipe == "lofi" else f"{run}-losa"
    return [(first, settings.encoder_epochs), (f"{run}-head", settings.epochs)]


@dataclass
class Step:
    name: str
    state: str  # done | pending | partly done
    work: str = ""


def plan_job(config: Config, storage_options: Mapping[str, Any]) -> list[Step]:
    """Each step's state and the work it would still do, read from ROOT."""
    check_job(config)
    job, root = config.job, Store(config.job.root, storage_options)
    steps = []
    listed = list_videos(job.videos, storage_options, config.ingest.extensions).videos
    previous = manifest_rows(root)
    unchanged = [item for item in listed if is_unchanged(previous.get(item.video_id), item)]
    todo = len(listed) - len(unchanged)
    steps.append(
        Step(
            "ingest",
            "done" if not todo and root.exists(MANIFEST_PATH) else "pending",
            f"{len(listed)} videos listed, {todo} to probe",
        )
    )
    schedule = load_schedule(config.materialize.schedule)
    if todo or not root.exists(MANIFEST_PATH):
        steps += [
            Step(name, "pending", "after ingest")
            for name in (
                "materialize",
                "extract",
                *(f"train {r}" for r, _ in training_runs(config)),
                "evaluate",
            )
        ]
        return steps
    videos = ok_videos(root)
    settings = config.materialize
    jobs, _ = plan_jobs(
        root,
        schedule,
        videos,
        settings.videos_per_shard,
        frame_codec(settings),
        materialize_preprocess(config),
    )
    pending = [video for job_ in jobs for video in job_.videos]
    hours = sum(video.duration for video in pending) / 3600
    snippets = sum(_snippets(schedule, f, v.duration) for v in pending for f in schedule.fidelities)
    steps.append(
        Step(
            "materialize",
            "pending" if jobs else "done",
            f"{len(jobs)} shards, {len(pending)} videos, {hours:.2f} h of video, "
            f"{snippets} snippets",
        )
    )
    if jobs:
        steps.append(Step("extract", "pending", "after materialize"))
    else:
        plan = plan_extract(config, root, storage_options)
        count = sum(len(plan.sources[part.part]) for part in plan.todo)
        steps.append(
            Step(
                "extract",
                "pending" if plan.todo else "done",
                f"features {plan.fingerprint}: {len(plan.todo)} of "
                f"{len(plan.jobs)} parts, {count} videos",
            )
        )
    for run, epochs in training_runs(config):
        done = latest_epoch(root, run)
        state = (
            "done"
            if done >= epochs and root.exists(predictions_path(run))
            else ("pending" if not done else "partly done")
        )
        steps.append(Step(f"train {run}", state, f"{done} of {epochs} epochs done"))
    evaluated = root.exists(evaluation_path(final_run(config)))
    steps.append(
        Step("evaluate", "done" if evaluated else "pending", predictions_path(final_run(config)))
    )
    return steps


def _snippets(schedule, fidelity, duration: float) -> int:
    if schedule.sampling == "resize":
        return fidelity.snippets
    frames = duration * schedule.fps
    return max(1, int(frames // schedule.snippet_stride(fidelity)))


@dataclass
class JobSummary:
    steps: list[tuple[str, StageSummary]] = field(default_factory=list)
    result: DetectionResult | None = None
    run: str = ""
    progress_line: str = ""

    @property
    def failed_videos(self) -> int:
        """Failures recorded by the steps (a video failed at ingest is counted there only;
        one that failed to decode counts in materialize and again in extract)."""
        return sum(summary.failed_videos for _, summary in self.steps)

    def lines(self, root: Store) -> list[str]:
        out = []
        for name, summary in self.steps:
            out.append(f"== {name}")
            if summary.progress_line:
                out.append(summary.progress_line)
            out += summary.lines(root)
        if self.result is not None:
            out += [
                f"== evaluate {self.run}",
                self.result.table(per_class=True),
                f"report: {root.url_of(report_path(self.run))}",
            ]
        return out


def run_job(config: Config, storage_options: Mapping[str, Any], command: str) -> JobSummary:
    """Runs (or continues) every step of the recipe."""
    check_job(config)
    job, root = config.job, Store(config.job.root, storage_options)
    summary = JobSummary(run=final_run(config))
    summary.steps.append(
        ("ingest", run_ingest(config, root, job.videos, job.annotations, storage_options, command))
    )
    summary.steps.append(("materialize", run_materialize(config, root, storage_options, command)))
    features = run_extract(config, root, storage_options, command)
    summary.steps.append(("extract", features))
    start = {"encoder": config.extract.encoder, "checkpoint": config.extract.checkpoint}
    if job.recipe == "head":
        head = run_train(
            config_with(config, train={"mode": "head", "features": features.fingerprint}),
            root,
            storage_options,
            command,
        )
        summary.steps.append(("train", head))
    elif job.recipe == "lofi":
        recipe = run_lofi_recipe(config_with(config, train=start), root, storage_options, command)
        summary.steps.append(("the LoFi recipe", recipe))
        head = recipe.head
    else:
        adapters = f"{config.train.run}-losa"
        summary.steps.append(
            (
                "train LoSA",
                run_train(
                    config_with(
                        config,
                        train={
                            **start,
                            "mode": "losa",
                            "run": adapters,
                            "epochs": config.train.encoder_epochs,
                        },
                    ),
                    root,
                    storage_options,
                    command,
                ),
            )
        )
        adapted = run_extract(
            config_with(
                config, extract={"losa": True, "checkpoint": root.url_of(encoder_path(adapters))}
            ),
            root,
            storage_options,
            command,
        )
        summary.steps.append(("regenerate features", adapted))
        head = run_train(
            config_with(
                config,
                train={"mode": "head", "run": final_run(config), "features": adapted.fingerprint},
            ),
            root,
            storage_options,
            command,
        )
        summary.steps.append(("train the head", head))
    summary.result = head.result  # training scored it and saved runs/<run>/evaluation.json
    return summary
