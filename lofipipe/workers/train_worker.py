"""Ray Train's side of a training run: the function every data-parallel worker runs, and
the `TorchTrainer` that starts them (gloo on CPUs, NCCL on GPUs, set up by Ray Train)."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import TYPE_CHECKING

from lofipipe.training.head_trainer import HeadTrainer
from lofipipe.training.lofi_trainer import LofiTrainer
from lofipipe.training.losa_trainer import LosaTrainer
from lofipipe.training.trainer import Trainer, TrainJob

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer

TRAINERS: dict[str, type[Trainer]] = {"head": HeadTrainer, "lofi": LofiTrainer, "losa": LosaTrainer}


def train_worker(job: TrainJob) -> None:
    """Runs in each Ray Train worker: its rank's share of every step of the run."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    trainer = TRAINERS[job.settings.mode](
        job,
        context.get_world_rank(),
        context.get_world_size(),
        wrap=ray.train.torch.prepare_model,
        log=lambda line: None,
    )
    trainer.run()  # the driver shows its epochs from the run's metrics


def torch_trainer(job: TrainJob, use_gpu: bool, threads: int) -> TorchTrainer:
    """A `TorchTrainer` of `job.settings.workers` workers, each holding a GPU or `threads`
    CPUs; a worker group that fails restarts up to `train.max_failures` times."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    settings = job.settings
    return TorchTrainer(
        lambda: train_worker(job),
        scaling_config=ScalingConfig(
            num_workers=settings.workers,
            use_gpu=use_gpu,
            resources_per_worker=None if use_gpu else {"CPU": threads},
        ),
        # ray.train exports Train v2's RunConfig, which takes logging_config; mypy sees only
        # v1's, which ray.train imports first and replaces when v2 is on (the default).
        run_config=RunConfig(  # type: ignore[call-arg]
            name=f"lofipipe-{job.run}-{os.getpid()}",
            # Ray keeps only its own run state here: lofipipe writes the checkpoints.
            storage_path=os.path.join(tempfile.gettempdir(), "lofipipe-ray-train"),
            failure_config=FailureConfig(max_failures=settings.max_failures),
            # Ray Train's INFO lines (process groups, DDP wrapping) and its warnings that
            # the state API is off (lofipipe starts Ray without the dashboard) are noise.
            logging_config=LoggingConfig(log_level="ERROR"),
        ),
    )
