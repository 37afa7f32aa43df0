"""Head training: the loop in-process, then Ray Train runs (1 and 2 workers, a killed
worker, a rerun, S3)."""

import json
import threading

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from support.cli import run
from support.faults import kill_a_train_worker_when, train_worker_pids
from support.feature_data import FINGERPRINT, write_feature_set
from support.reliability import record

from lofipipe.cli import main
from lofipipe.evaluation.detection import parse_thresholds
from lofipipe.schemas.config import load_config
from lofipipe.storage import Store
from lofipipe.training.checkpoints import latest_checkpoint
from lofipipe.training.feature_set import FeatureSet, inference_windows
from lofipipe.training.head_trainer import HeadTrainer
from lofipipe.training.trainer import TrainJob, lr_factor

SMALL = [
    "--set",
    "train.head.dim=32",
    "--set",
    "train.head.levels=3",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.warmup_epochs=1",
    "--set",
    "train.min_steps=0",
]


def _job(root, videos, epochs=60, **changes):
    settings = load_config(
        None,
        [
            f"train.epochs={epochs}",
            "train.head.dim=32",
            "train.head.levels=3",
            "train.batch_size=4",
            "train.warmup_epochs=2",
            "train.min_steps=0",
            "train.lr=1e-3",
            "train.run=unit",
            f"train.features={FINGERPRINT}",
            *(f"train.{k}={v}" for k, v in changes.items()),
        ],
    ).train
    return TrainJob(
        root, "unit", settings, videos, videos, parse_thresholds(settings.tiou), threads=2
    )


def test_feature_set_reads_one_video_and_its_truth(tmp_path):
    root = Store(str(tmp_path))
    truth = write_feature_set(root, videos=8)
    data = FeatureSet(root, FINGERPRINT)
    assert data.label_names == ["jump", "run"] and data.dim == 8
    assert data.videos("validation") == ["video_006", "video_007"]
    video = data.read("video_005")
    assert video.values.shape == (32, 8)
    assert sorted(map(tuple, video.segments.tolist())) == sorted(
        (a, b) for a, b, _ in truth["video_005"]
    )
    # Seconds and snippet positions convert both ways; windows keep the same grid.
    assert np.allclose(video.to_snippets(np.array([0.25, 5.25])), [0, 10])
    windows = inference_windows(video, 16)
    assert [w.first for w in windows] == [0, 8, 16]
    assert np.allclose(windows[1].to_seconds(np.array([0.0])), [4.25])


def test_warmup_then_cosine():
    assert lr_factor(0, 10, 110) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110) == pytest.approx(0.5)
    assert lr_factor(110, 10, 110) == pytest.approx(0.0, abs=1e-12)


def test_head_overfits_a_few_videos(tmp_path):
    root = Store(str(tmp_path))
    write_feature_set(root, videos=8)
    videos = ["video_000", "video_001", "video_002", "video_003"]
    trainer = HeadTrainer(_job(root, videos), log=lambda line: None)
    trainer.run()
    rows = root.read_table("runs/unit/metrics.parquet").to_pylist()
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(epochs) == 60 and epochs[-1]["loss"] < epochs[0]["loss"] / 3
    assert epochs[-1]["val_map"][0] > 0.9, epochs[-1]["val_map"]
    predictions = json.loads((tmp_path / "runs/unit/predictions.json").read_text())
    assert sorted(predictions["results"]) == videos
    best = predictions["results"]["video_000"][0]
    assert set(best) == {"segment", "label", "score"} and best["label"] in ("jump", "run")
    assert (tmp_path / "runs/unit/report.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "runs/unit/checkpoints").iterdir()) == [
        "epoch-0059.pt",
        "epoch-0060.pt",
    ]


def _train(root, name, workers=1, epochs=4, *extra):
    return run(
        "train",
        root,
        "--mode",
        "head",
        "--features",
        FINGERPRINT,
        "--run",
        name,
        "--workers",
        workers,
        "--epochs",
        epochs,
        *SMALL,
        *extra,
    )


def _weights(root, name):
    return latest_checkpoint(Store(str(root)), name)["head"]


def _rows(root, name):
    return Store(str(root)).read_table(f"runs/{name}/metrics.parquet").to_pylist()


@pytest.mark.ray
def test_two_workers_match_one_worker_with_the_same_global_batch(tmp_path, ray_local):
    write_feature_set(Store(str(tmp_path)), videos=16, validation=4)
    one = _train(tmp_path, "one", 1)
    assert "run one: 4 epochs on 1 workers" in one and "avg" in one
    _train(tmp_path, "two", 2)
    for name, value in _weights(tmp_path, "one").items():
        assert torch.allclose(value, _weights(tmp_path, "two")[name], atol=1e-4), name
    losses = [
        [r["loss"] for r in _rows(tmp_path, name) if r["kind"] == "step"] for name in ("one", "two")
    ]
    assert len(losses[0]) == 4 * 3 and np.allclose(losses[0], losses[1], rtol=1e-3)
    predictions = json.loads((tmp_path / "runs/two/predictions.json").read_text())
    assert sorted(predictions["results"]) == [f"video_{i:03d}" for i in range(12, 16)]


@pytest.mark.ray
def test_a_rerun_resumes_from_the_newest_checkpoint(tmp_path, ray_local):
    write_feature_set(Store(str(tmp_path)), videos=16, validation=4)
    _train(tmp_path, "r", 1)
    finished = _weights(tmp_path, "r")
    # Stopped after epoch 3 was checkpointed: the newest checkpoint is epoch 3.
    (tmp_path / "runs/r/checkpoints/epoch-0004.pt").unlink()
    (tmp_path / "runs/r/predictions.json").unlink()
    output = _train(tmp_path, "r", 1)
    assert "(resumed after epoch 3)" in output
    for name, value in finished.items():
        assert torch.allclose(value, _weights(tmp_path, "r")[name], atol=1e-6), name
    rows = _rows(tmp_path, "r")
    steps = [r["step"] for r in rows if r["kind"] == "step"]
    assert steps == list(range(1, 13))  # nothing twice
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2, 3, 4]
    assert [r["epoch"] for r in rows if r["kind"] == "resume"] == [3]
    assert (tmp_path / "runs/r/predictions.json").exists()
    # A finished run is not trained again; other settings are refused.
    again = _train(tmp_path, "r", 1)
    assert "(resumed after epoch 4)" in again
    # A run saved by an older lofipipe lacks the newer settings: it resumes.
    saved = tmp_path / "runs/r/config.yaml"
    older = yaml.safe_load(saved.read_text())
    del older["train"]["precision"]
    saved.write_text(yaml.safe_dump(older))
    assert "(resumed after epoch 4)" in _train(tmp_path, "r", 1)
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(tmp_path),
            "--features",
            FINGERPRINT,
            "--run",
            "r",
            "--epochs",
            "4",
            *SMALL,
            "--set",
            "train.lr=0.01",
        ],
    )
    assert result.exit_code == 2
    assert "run 'r' exists with other settings (train.lr)" in result.output


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.reliability
def test_a_killed_worker_resumes_from_its_checkpoint(tmp_path, ray_local):
    write_feature_set(Store(str(tmp_path)), videos=48, validation=4)
    outputs = []
    thread = threading.Thread(
        target=lambda: outputs.append(_train(tmp_path, "k", 2, 16, "--set", "train.head.dim=256"))
    )
    earlier = train_worker_pids()
    thread.start()
    assert (
        kill_a_train_worker_when(
            tmp_path / "runs/k/checkpoints/epoch-0002.pt", thread.is_alive, earlier
        )
        == 2
    )
    thread.join(timeout=300)
    assert outputs and "run k: 16 epochs on 2 workers" in outputs[0]
    assert "worker group restarted: resumed after epoch" in outputs[0]
    rows = _rows(tmp_path, "k")
    resumed = [r["epoch"] for r in rows if r["kind"] == "resume"]
    assert len(resumed) == 1 and 2 <= resumed[0] < 16
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(1, 16 * 11 + 1))
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == list(range(1, 17))
    record(
        "fault",
        "Ray Train worker killed (SIGKILL) during training",
        f"the worker group restarted from the epoch-{resumed[0]} checkpoint; every step "
        f"and epoch recorded once",
        "test_head_training",
    )


@pytest.mark.ray
@pytest.mark.s3
def test_training_on_s3(s3_bucket, ray_local):
    bucket, options = s3_bucket
    root = Store(f"s3://{bucket}/root", options)
    write_feature_set(root, videos=12, validation=4)
    pairs = [f"--storage-option={k}={v}" for k, v in options.items()]
    output = _train(root.url, "s3run", 1, 2, *pairs)
    assert "run s3run: 2 epochs" in output
    assert root.list("runs/s3run/checkpoints") == [
        "runs/s3run/checkpoints/epoch-0001.pt",
        "runs/s3run/checkpoints/epoch-0002.pt",
    ]
    for name in ("config.yaml", "metrics.parquet", "predictions.json", "report.png"):
        assert root.exists(f"runs/s3run/{name}"), name
    assert options["secret"] not in root.read_text("runs/s3run/config.yaml")
    assert latest_checkpoint(root, "s3run")["epoch"] == 2


def test_windows_for_long_videos(tmp_path):
    """Stride sampling: training on random 16-snippet windows of 32-snippet videos,
    predicting over half-overlapping windows merged into one list per video."""
    root = Store(str(tmp_path))
    write_feature_set(root, videos=8)
    videos = ["video_000", "video_001", "video_002", "video_003"]
    job = _job(root, videos)
    job.window = 16
    trainer = HeadTrainer(job, log=lambda line: None)
    trainer.run()
    last = [r for r in trainer.rows if r["kind"] == "epoch"][-1]
    assert last["val_map"][0] > 0.8, last["val_map"]
    found = trainer.predict(trainer.data.read("video_000"))
    assert len(found) <= 100
    assert all(0.0 <= p["segment"][0] < p["segment"][1] <= 16.0 for p in found)


def test_head_inputs_rebuild_a_schedule_file_from_the_lineage(tmp_path):
    """Features extracted with a schedule .yaml train with `--mode head` even where the
    file is gone: the lineage keeps the whole schedule, as extract writes it."""
    from lofipipe.layout import lineage_path
    from lofipipe.pipeline.train import _head_inputs
    from lofipipe.schemas.schedule import load_schedule

    root = Store(str(tmp_path / "root"))
    write_feature_set(root, videos=4)
    path = tmp_path / "thumos-like.yaml"
    path.write_text(
        "full: {name: full, snippets: 16, frames: 8, size: 64}\n"
        "train: [{name: low, snippets: 8, frames: 8, size: 32}]\n"
        "sampling: stride\nfps: 3e1\nstride: 4\n"
    )
    schedule = load_schedule(str(path))
    lineage = json.loads(root.read_text(lineage_path(FINGERPRINT)))
    lineage.update(schedule=schedule.name, schedule_spec=schedule.record())
    root.write_text(lineage_path(FINGERPRINT), json.dumps(lineage, indent=1))
    path.unlink()
    config = load_config(None, [f"train.features={FINGERPRINT}"])
    annotations, videos, window = _head_inputs(config, root)
    assert FeatureSet(root, FINGERPRINT).schedule == schedule
    assert window == 16 and len(videos) == 4 and annotations.label_names == ["jump", "run"]
    config = load_config(None, ["train.head.window=4", f"train.features={FINGERPRINT}"])
    assert _head_inputs(config, root)[2] == 4
