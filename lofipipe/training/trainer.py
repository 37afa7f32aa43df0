"""The training loop every mode shares, as each data-parallel worker runs it.

Plain PyTorch; `torch.distributed` is used where it is initialized (Ray Train sets it up),
so the same loop runs in-process in tests. Every worker draws the same global order of
training videos each epoch and takes its slice of each global batch, and losses are
normalized by the global number of positive points, so N workers compute the gradient of
one worker with the same global batch. A mode (head, lofi) supplies the model, how a
batch of videos becomes the head's output, and each validation video's features.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lofipipe import __version__
from lofipipe.data.prefetch import prefetched
from lofipipe.data.runs import write_metrics
from lofipipe.evaluation.detection import DetectionResult, Segment, evaluate
from lofipipe.layout import predictions_path
from lofipipe.models.precision import check_precision, resolve_precision
from lofipipe.models.tal_head import HeadOutput, TALHead, diou_loss_1d, sigmoid_focal_loss
from lofipipe.reports.figures import write_report_plot
from lofipipe.schemas.config import TrainConfig
from lofipipe.schemas.preprocess import Preprocess
from lofipipe.schemas.schedule import Schedule
from lofipipe.storage import Store
from lofipipe.training.checkpoints import latest_checkpoint, save_checkpoint
from lofipipe.training.feature_set import Batch, VideoFeatures
from lofipipe.training.predict import post_processing, predict_video

PLOT_EVERY_S = 30.0  # how often a training run redraws report.png


@dataclass
class TrainJob:
    """What every worker of a run is given."""

    root: Store
    run: str
    settings: TrainConfig
    train_videos: list[str]
    val_videos: list[str]
    thresholds: tuple[float, ...]
    window: int = 0  # snippets per window (stride sampling); 0: whole videos
    threads: int = 1
    # lofi and losa: the schedule and preprocessing, read on the driver (a schedule .yaml
    # on the driver's disk is not on the other nodes of a cluster).
    schedule: Schedule | None = None
    preprocess: Preprocess | None = None


@dataclass(frozen=True)
class StepPlan:
    """What one optimizer step takes: a fidelity (None: features), a global batch size and
    a learning-rate multiplier."""

    fidelity: str | None
    batch_size: int
    lr_scale: float = 1.0


def steps_per_pass(videos: int, batch_size: int) -> int:
    """Steps that give each of `videos` training videos its turn once."""
    return max(1, math.ceil(videos / batch_size))


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all workers, in place on its device (itself when not
    distributed): no copy to the host."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _all_gather(value: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out
    return [value]


class LossNormalizer:
    """ActionFormer's divisor of the summed losses: a moving average of the positive points
    per step (from 100, momentum 0.9), steadier than each batch's own count, so that a
    batch with few actions does not weigh as much as one with many. It stays on the
    device, as a tensor, after its first update."""

    def __init__(self, value: float = 100.0, momentum: float = 0.9):
        self.value: float | torch.Tensor = value
        self.momentum = momentum

    def update(self, positives: torch.Tensor) -> torch.Tensor:
        self.value = self.momentum * self.value + (1 - self.momentum) * positives.clamp(min=1)
        return self.value


def head_losses(
    head_output: HeadOutput, batch: Batch, world: int, normalizer: LossNormalizer | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to back-propagate, divided by `normalizer`'s average of the global positive
    points (without one: by this batch's count) and scaled so that averaging over `world`
    workers gives the global gradient; and this worker's [loss, classification,
    regression, positive points] sums, detached (`step_losses` makes them the logged
    per-point values). One all-reduce of the count, no copy to the host."""
    logits = torch.cat(head_output.logits, dim=1).float()
    offsets = torch.cat(head_output.offsets, dim=1).float()
    valid = torch.cat(head_output.masks, dim=1)
    classes = batch.classes.to(logits.device)
    distances = batch.distances.to(logits.device)
    positive = (classes.sum(-1) > 0) & valid
    local = positive.sum().float()
    count = all_reduce_sum(local.clone())
    divisor = normalizer.update(count) if normalizer else count.clamp(min=1)
    cls_loss = sigmoid_focal_loss(logits, classes, weight=valid.float())
    reg_loss = diou_loss_1d(offsets, distances, weight=positive.float())
    loss = (cls_loss + reg_loss) / divisor
    sums = torch.stack([cls_loss + reg_loss, cls_loss, reg_loss, local]).detach()
    return loss * world, sums


def step_losses(sums: list[torch.Tensor]) -> list[list[float]]:
    """Per step, the global [loss, classification, regression] per positive point, from
    every step's `head_losses` sums: one all-reduce and one copy to the host for them all."""
    if not sums:
        return []
    total = all_reduce_sum(torch.stack(sums)).double().cpu()
    per_point = total[:, :3] / total[:, 3:].clamp(min=1)
    return per_point.tolist()


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weights, none on norms, biases and scales."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]


def optimizer_step(
    loss: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    clip_grad_norm: float,
) -> None:
    """Back-propagates `loss` and updates: through `scaler` (fp16's loss scaling, a
    pass-through when disabled), the gradients unscaled before they are clipped."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()


class WeightAverage:
    """An exponential moving average of a module's trainable parameters and floating
    buffers, updated after every optimizer step (ActionFormer's model EMA)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.live = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.live.update({n: b for n, b in module.named_buffers() if b.is_floating_point()})
        self.average = {name: tensor.detach().clone() for name, tensor in self.live.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, tensor in self.live.items():
            self.average[name].lerp_(tensor.detach(), 1 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The module holds the averaged weights inside the block, its own after it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for name, tensor in self.live.items():
            own = tensor.detach().clone()
            tensor.copy_(self.average[name])
            self.average[name].copy_(own)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self.average[name].copy_(tensor)


class Trainer(ABC):
    """Trains, validates and checkpoints one run on one worker; subclasses say what a
    step computes."""

    labels: list[str]

    def __init__(
        self,
        job: TrainJob,
        rank: int = 0,
        world: int = 1,
        wrap: Callable[[nn.Module], nn.Module] = lambda model: model,
        log: Callable[[str], None] = print,
    ):
        self.job, self.rank, self.world, self.log = job, rank, world, log
        settings = job.settings
        torch.set_num_threads(job.threads)
        torch.manual_seed(settings.seed)
        self.model = self.build_model()
        # On its training device (and wrapped) before anything refers to its tensors: the
        # optimizer's moments, the weight average and a checkpoint's state then land there.
        self.trained = wrap(self.model)
        self.device = next(self.model.parameters()).device
        self.plans = [self.epoch_plan(epoch) for epoch in range(settings.epochs)]
        self.first_step = np.concatenate([[0], np.cumsum([len(p) for p in self.plans])])
        scales = [step.lr_scale for plan in self.plans for step in plan]
        total = len(scales)
        warmup = round(settings.warmup_epochs * len(self.plans[0]))
        self.post = post_processing(settings.head)
        self.rows: list[dict[str, Any]] = []
        self.epoch = 0
        self.plotted = -math.inf  # when report.png was last drawn (time.monotonic)
        state = latest_checkpoint(job.root, job.run)
        if state is None:
            self.start()
        self.optimizer = torch.optim.AdamW(self.parameter_groups(), lr=settings.lr)
        self.normalizer = LossNormalizer()
        # The encoder's precision (a head on features trains in fp32); fp16 gradients
        # underflow without loss scaling, bf16 and fp32 need none.
        precision = "fp32"
        if settings.mode != "head":
            precision = resolve_precision(settings.precision, self.device.type == "cuda")
            check_precision(precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.average = WeightAverage(self.model, settings.ema_decay) if settings.ema_decay else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(step, warmup, total) * scales[min(step, total - 1)],
        )
        if state is not None:
            self.load_model_state(state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.normalizer.value = float(state.get("loss_normalizer", self.normalizer.value))
            if "grad_scaler" in state:
                self.scaler.load_state_dict(state["grad_scaler"])
            if self.average is not None and "ema" in state:
                self.average.load_state_dict(state["ema"])
            self.rows, self.epoch = list(state["metrics"]), int(state["epoch"])
            if self.epoch < settings.epochs:  # recorded with the next checkpoint
                self.rows.append(
                    {
                        "kind": "resume",
                        "epoch": self.epoch,
                        "step": int(self.first_step[self.epoch]),
                    }
                )
            if rank == 0:
                self.log(f"resuming {job.run} after epoch {self.epoch} from its checkpoint")

    # What a mode supplies ---------------------------------------------------------------

    @property
    @abstractmethod
    def head(self) -> TALHead:
        """The TAL head (inside the model)."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The module to train (and wrap for data parallelism)."""

    @abstractmethod
    def epoch_plan(self, epoch: int) -> list[StepPlan]:
        """The steps of one epoch."""

    def start(self) -> None:
        """Prepares the model of a fresh run, on its device, before the first step (a
        resumed run has its checkpoint instead); nothing by default."""
        return None

    @abstractmethod
    def read_batch(self, video_ids: Sequence[str], plan: StepPlan, seeds: Sequence[int]) -> Any:
        """The host-side inputs of one step on these training videos: read, decoded and
        cropped (`seeds` seed the crops). Runs `train.prefetch_batches` steps ahead of the
        step, on a background thread: it must not touch the model."""

    @abstractmethod
    def forward_batch(self, inputs: Any, plan: StepPlan) -> tuple[HeadOutput, Batch]:
        """The head's output on a step's inputs (from `read_batch`), and their targets."""

    @abstractmethod
    def video_features(self, video_id: str) -> VideoFeatures:
        """A validation video's features (no gradients)."""

    @abstractmethod
    def ground_truth(self, video_ids: Sequence[str]) -> list[Segment]:
        """The annotated actions of these videos, for evaluation."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        return parameter_groups(self.model, self.job.settings.weight_decay)

    def model_state(self) -> dict[str, Any]:
        return {"head": self.head.state_dict()}

    def load_model_state(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])

    def finish(self) -> None:  # noqa: B027 - optional: most modes leave nothing more
        """Worker 0, once all epochs are done: anything the mode leaves besides."""

    def set_train_mode(self) -> None:
        self.trained.train()

    # The loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Trains the remaining epochs; worker 0 checkpoints each and writes the final
        predictions."""
        predictions = None
        while self.epoch < self.job.settings.epochs:
            started = time.perf_counter()
            steps = self._train_epoch()
            with self.averaged():
                predictions, result = self.validate()
            self.epoch += 1
            self._finish_epoch(steps, result, time.perf_counter() - started)
        if predictions is None and self.job.root.exists(predictions_path(self.job.run)):
            return  # a finished run, rerun
        with self.averaged():
            if predictions is None:  # finished, but stopped before writing its predictions
                predictions, _ = self.validate()
            if self.rank == 0:  # the others hold no predictions: worker 0 gathered them
                self.finish()
                self.job.root.write_text(
                    predictions_path(self.job.run),
                    json.dumps(
                        {
                            "version": f"lofipipe {__version__}",
                            "results": predictions,
                            "external_data": self.description(),
                        }
                    ),
                )

    def description(self) -> dict[str, Any]:
        return {"mode": self.job.settings.mode}

    def averaged(self) -> AbstractContextManager[None]:
        """The model with its averaged weights (train.ema_decay), else as it is."""
        return self.average.applied() if self.average is not None else nullcontext()

    def _train_epoch(self) -> list[dict[str, Any]]:
        job, settings = self.job, self.job.settings
        self.set_train_mode()
        # Shuffled passes over the training videos, one after another, as many as the
        # epoch's batches take: every video has its turn, none twice before all once.
        count = len(job.train_videos)
        sizes = [min(plan.batch_size, count) for plan in self.plans[self.epoch]]
        rng = np.random.default_rng([settings.seed, self.epoch])
        order = np.concatenate(
            [rng.permutation(count) for _ in range(math.ceil(sum(sizes) / count))]
        )
        # A draw's position in the epoch seeds its augmentation: the same with any number of
        # workers, different for a video's every turn.
        starts = np.concatenate([[0], np.cumsum(sizes)])
        positions = [
            list(range(first, first + size))[self.rank :: self.world]
            for first, size in zip(starts, sizes, strict=False)
        ]
        reads = (
            self.read_batch([job.train_videos[order[i]] for i in mine], plan, mine)
            for plan, mine in zip(self.plans[self.epoch], positions, strict=True)
        )
        rows: list[dict[str, Any]] = []
        sums: list[torch.Tensor] = []
        started = time.perf_counter()
        for step, (plan, inputs) in enumerate(
            zip(self.plans[self.epoch], prefetched(reads, settings.prefetch_batches), strict=True)
        ):
            output, batch = self.forward_batch(inputs, plan)
            loss, step_sums = head_losses(output, batch, self.world, self.normalizer)
            sums.append(step_sums)
            lr = self.optimizer.param_groups[0]["lr"]
            optimizer_step(loss, self.model, self.optimizer, self.scaler, settings.clip_grad_norm)
            self.scheduler.step()
            if self.average is not None:
                self.average.update()
            rows.append(
                {
                    "kind": "step",
                    "epoch": self.epoch + 1,
                    "step": int(self.first_step[self.epoch]) + step + 1,
                    "lr": lr,
                    # since the last step: waiting for its inputs, then (on a GPU) queueing
                    # its work; the epoch's total is exact
                    "seconds": time.perf_counter() - started,
                }
            )
            started = time.perf_counter()
        for row, values in zip(rows, step_losses(sums), strict=True):
            row.update(zip(("loss", "cls_loss", "reg_loss"), values, strict=True))
        return rows

    def predict(self, video: VideoFeatures) -> list[dict[str, Any]]:
        """ActivityNet-format detections of one video, best first."""
        settings = self.job.settings
        return predict_video(
            self.head, video, self.labels, settings.head.levels, self.post, self.job.window
        )

    def validate(self) -> tuple[dict[str, list], DetectionResult | None]:
        """Every worker predicts its share of the validation videos; worker 0 scores all."""
        self.model.eval()
        mine = {
            video_id: self.predict(self.video_features(video_id))
            for video_id in self.job.val_videos[self.rank :: self.world]
        }
        gathered = _all_gather(mine)
        if self.rank != 0:
            return {}, None
        predictions = {k: v for part in gathered for k, v in part.items()}
        predictions = {k: predictions[k] for k in sorted(predictions)}
        found = [
            Segment(video_id, p["label"], *p["segment"], p["score"])
            for video_id, items in predictions.items()
            for p in items
        ]
        return predictions, evaluate(
            self.ground_truth(self.job.val_videos), found, self.job.thresholds
        )

    def _finish_epoch(
        self, steps: list[dict[str, Any]], result: DetectionResult | None, seconds: float
    ) -> None:
        self.rows.extend(steps)
        if self.rank != 0:
            return
        job = self.job
        mean = {
            key: float(np.mean([r[key] for r in steps])) for key in ("loss", "cls_loss", "reg_loss")
        }
        self.rows.append(
            {
                "kind": "epoch",
                "epoch": self.epoch,
                "step": int(self.first_step[self.epoch]),
                **mean,
                "lr": self.optimizer.param_groups[0]["lr"],
                "val_average_map": result.average_mAP,
                "val_map": [float(v) for v in result.mAP],
                "seconds": seconds,
            }
        )
        save_checkpoint(
            job.root,
            job.run,
            self.epoch,
            {
                **self.model_state(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "loss_normalizer": float(self.normalizer.value),
                "grad_scaler": self.scaler.state_dict(),
                **({"ema": self.average.state_dict()} if self.average is not None else {}),
                "epoch": self.epoch,
                "metrics": self.rows,
                "labels": self.labels,
                "run_info": self.description(),
                "lofipipe_version": __version__,
            },
            job.settings.keep_checkpoints,
        )
        write_metrics(job.root, job.run, self.rows)
        # Drawing the curves costs about 0.3 s, more than an epoch of a small head: the
        # picture follows the run every PLOT_EVERY_S and is complete after the last epoch.
        if self.epoch == job.settings.epochs or time.monotonic() - self.plotted >= PLOT_EVERY_S:
            write_report_plot(job.root, job.run, self.rows, job.thresholds)
            self.plotted = time.monotonic()
        first = f"mAP@{job.thresholds[0]:.2f} {100 * result.mAP[0]:5.2f}"
        self.log(
            f"epoch {self.epoch}/{job.settings.epochs}: loss {mean['loss']:.4f}, "
            f"val {first}, average {100 * result.average_mAP:5.2f}, "
            f"{len(steps) / seconds:.1f} steps/s"
        )
