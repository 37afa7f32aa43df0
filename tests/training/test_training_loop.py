"""What the training loop does to every run: each video's turn in each epoch, a minimum
number of steps, ActionFormer's input cropping, loss normaliser and weight average."""

import numpy as np
import pytest
import torch
from support.feature_data import FINGERPRINT, write_feature_set
from torch import nn

import lofipipe.training.trainer as trainer_module
from lofipipe.schemas.config import load_config
from lofipipe.storage import Store
from lofipipe.training.checkpoints import latest_checkpoint
from lofipipe.training.feature_set import VideoFeatures, training_crop
from lofipipe.training.head_trainer import HeadTrainer
from lofipipe.training.trainer import LossNormalizer, TrainJob, WeightAverage

TRAINING = [f"video_{i:03d}" for i in range(7)]  # 7 videos: batches of 3 do not divide them


class _Recording(HeadTrainer):
    """Head training that notes the videos of every step."""

    drawn: dict[int, list[list[str]]]

    def read_batch(self, video_ids, plan, seeds):
        self.drawn.setdefault(self.epoch, []).append(list(video_ids))
        return super().read_batch(video_ids, plan, seeds)


def _trainer(root, epochs=3, **changes):
    settings = load_config(
        None,
        [
            f"train.epochs={epochs}",
            "train.head.dim=16",
            "train.head.levels=3",
            "train.batch_size=3",
            "train.warmup_epochs=1",
            "train.min_steps=0",
            f"train.features={FINGERPRINT}",
            *(f"train.{k}={v}" for k, v in changes.items()),
        ],
    ).train
    job = TrainJob(root, "loop", settings, TRAINING, ["video_007", "video_008"], (0.5,))
    trainer = _Recording(job, log=lambda line: None)
    trainer.drawn = {}
    return trainer


def test_every_training_video_has_its_turn_each_epoch(tmp_path):
    root = Store(str(tmp_path))
    write_feature_set(root, videos=9)
    trainer = _trainer(root)
    trainer.run()
    for epoch in range(3):
        batches = trainer.drawn[epoch]
        assert [len(b) for b in batches] == [3, 3, 3]  # ceil(7 / 3) steps of the full batch
        assert set(sum(batches, [])) == set(TRAINING), epoch
    assert trainer.drawn[0] != trainer.drawn[1]  # shuffled anew each epoch


def test_a_small_training_set_gets_the_minimum_number_of_steps(tmp_path):
    root = Store(str(tmp_path))
    write_feature_set(root, videos=9)
    trainer = _trainer(root, epochs=2, min_steps=10)
    trainer.run()
    # 3 steps a pass, 2 epochs: 2 passes an epoch give 12 >= 10 steps; every video
    # twice an epoch, the epochs (checkpoints, validations) as asked.
    rows = trainer.rows
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(1, 13))
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]
    drawn = sum(trainer.drawn[0], [])
    assert all(drawn.count(video) >= 2 for video in TRAINING), drawn


def _video(count: int, segments, labels) -> VideoFeatures:
    start = np.arange(count) * 1.0
    return VideoFeatures(
        "v",
        np.zeros((count, 4), np.float32),
        start,
        start + 1.0,
        np.array(segments, np.float64).reshape(-1, 2),
        np.array(labels, np.int64),
    )


def test_training_crops_keep_90_to_100_percent_and_an_action():
    video = _video(100, [[80.0, 90.0]], [1])
    lengths = set()
    for seed in range(200):
        part = training_crop(video, 0, (0.9, 1.0), np.random.default_rng(seed))
        lengths.add(len(part.values))
        assert 90 <= len(part.values) <= 100
        assert part.labels.tolist() == [1]  # the action is at least half inside
        assert part.to_seconds(np.array([0.0]))[0] == part.start[0] + 0.5
    assert min(lengths) == 90 and max(lengths) == 100
    # (1, 1) leaves videos whole; a video longer than the window gives a window.
    assert training_crop(video, 0, (1.0, 1.0), np.random.default_rng(0)) is video
    windows = [training_crop(video, 32, (0.9, 1.0), np.random.default_rng(s)) for s in range(20)]
    assert all(len(w.values) == 32 and len(w.labels) == 1 for w in windows)


def test_the_loss_normalizer_is_a_moving_average_of_positive_points():
    normalizer = LossNormalizer()
    assert float(normalizer.update(torch.tensor(20.0))) == pytest.approx(0.9 * 100 + 0.1 * 20)
    at_least_one = float(normalizer.update(torch.tensor(0.0)))
    assert at_least_one == pytest.approx(0.9 * 92 + 0.1 * 1)


def test_the_weight_average_follows_the_weights_and_swaps_back():
    layer = nn.Linear(2, 1)
    frozen = nn.Linear(2, 1).requires_grad_(False)
    model = nn.Sequential(layer, frozen)
    average = WeightAverage(model, decay=0.9)
    assert set(average.state_dict()) == {"0.weight", "0.bias"}  # frozen weights not kept
    first = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    average.update()
    expected = 0.9 * first + 0.1 * (first + 1.0)
    with average.applied():
        assert torch.allclose(layer.weight, expected)
    assert torch.allclose(layer.weight, first + 1.0)
    assert torch.allclose(average.state_dict()["0.weight"], expected)


def test_the_weight_average_stays_on_the_model_s_device():
    with torch.device("meta"):  # a stand-in for a GPU: any copy to the CPU would fail
        model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    average = WeightAverage(model, decay=0.999)
    average.update()
    with average.applied():
        assert all(p.device.type == "meta" for p in model.parameters())
    assert all(t.device.type == "meta" for t in average.state_dict().values())


def test_with_a_weight_average_validation_and_the_checkpoint_use_it(tmp_path):
    root = Store(str(tmp_path))
    write_feature_set(root, videos=9)
    trainer = _trainer(root, epochs=2, ema_decay=0.5)
    trainer.run()
    state = latest_checkpoint(root, "loop")
    assert set(state["ema"]) == {n for n, _ in trainer.head.named_parameters()}
    assert state["loss_normalizer"] < 100.0
    differs = [not torch.equal(state["ema"][n], state["head"][n]) for n in state["ema"]]
    assert any(differs)
    # The predictions are the averaged head's.
    with trainer.average.applied():
        expected = trainer.predict(trainer.data.read("video_007"))
    found = root.read_text("runs/loop/predictions.json")
    assert str(expected[0]["score"]) in found


# Loading a checkpoint into a model on the meta device copies nothing, and says so.
@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_a_resumed_run_trains_on_the_model_s_device_without_host_copies(tmp_path, monkeypatch):
    root = Store(str(tmp_path))
    write_feature_set(root, videos=9)
    _trainer(root, epochs=1, ema_decay=0.9).run()
    # The meta device stands in for a GPU: a tensor left on the CPU, or read back to the
    # host, fails there. The trainer resumes after epoch 1 with the model put on it.
    trainer = HeadTrainer(
        TrainJob(
            root,
            "loop",
            _trainer(root, epochs=2, ema_decay=0.9).job.settings,
            TRAINING,
            ["video_007"],
            (0.5,),
        ),
        wrap=lambda model: model.to("meta"),
        log=lambda line: None,
    )
    assert trainer.epoch == 1
    moments = [
        value
        for state in trainer.optimizer.state.values()
        for key, value in state.items()
        if key != "step"  # AdamW keeps its step counter on the CPU by design
    ]
    assert moments and all(value.device.type == "meta" for value in moments)
    assert all(value.device.type == "meta" for value in trainer.average.state_dict().values())
    copied = []

    def on_the_device(sums):  # the epoch's one copy of its losses to the host
        copied.extend(sums)
        assert all(value.device.type == "meta" for value in sums)
        return [[0.0, 0.0, 0.0] for _ in sums]

    monkeypatch.setattr(trainer_module, "step_losses", on_the_device)
    rows = trainer._train_epoch()
    assert len(rows) == len(copied) == 3
    assert isinstance(trainer.normalizer.value, torch.Tensor)
    assert trainer.normalizer.value.device.type == "meta"


class _Overlapping(_Recording):
    """Notes whether the next step's inputs were read while each step ran."""

    def read_batch(self, video_ids, plan, seeds):
        inputs = super().read_batch(video_ids, plan, seeds)
        with self.lock:
            self.reads += 1
            self.lock.notify_all()
        return inputs

    def forward_batch(self, inputs, plan):
        with self.lock:
            self.steps += 1
            self.overlapped.append(
                self.lock.wait_for(lambda: self.reads > self.steps, timeout=self.patience)
            )
        return super().forward_batch(inputs, plan)


@pytest.mark.parametrize("prefetch", [0, 1])
def test_the_next_steps_inputs_are_read_while_a_step_runs(tmp_path, prefetch):
    import threading

    root = Store(str(tmp_path))
    write_feature_set(root, videos=9)
    trainer = _trainer(root, epochs=1, prefetch_batches=prefetch)
    trainer.__class__ = _Overlapping
    trainer.lock, trainer.reads, trainer.steps, trainer.overlapped = threading.Condition(), 0, 0, []
    trainer.patience = 10 if prefetch else 0.2
    trainer.run()
    # The last step has no next one; every other step found its successor read.
    assert trainer.overlapped[:-1] == [bool(prefetch)] * 2
