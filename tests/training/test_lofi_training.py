"""LoFi mode: the schedule's steps, end-to-end training on real snippet shards, the adapted
encoder's checkpoint and the features it regenerates, and a run on Ray Train."""

import json
import re
import threading

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from support.cli import SHARDS, fresh_root, run, synth_and_ingest
from support.faults import kill_a_train_worker_when, train_worker_pids
from support.nvdec import install_nvdec_stand_in
from torch import nn

from lofipipe.cli import main
from lofipipe.data.annotations import AnnotationIndex
from lofipipe.data.features import read_features
from lofipipe.errors import ConfigError
from lofipipe.evaluation.detection import parse_thresholds
from lofipipe.layout import encoder_path
from lofipipe.models.registry import encoder_preprocess
from lofipipe.schemas.config import config_to_dict, load_config
from lofipipe.schemas.schedule import PRESETS, load_schedule
from lofipipe.storage import Store
from lofipipe.training.lofi_trainer import LofiTrainer, recalibrate_batchnorm, schedule_plan
from lofipipe.training.losa_trainer import LosaTrainer
from lofipipe.training.trainer import TrainJob


def test_plans_follow_each_cycle():
    long = schedule_plan(PRESETS["lofi-anet"], 1, videos=40)
    # Every video has its turn: 40 videos in batches of 16 take 3 steps.
    assert [(p.fidelity, p.batch_size, p.lr_scale) for p in long] == [("t-lofi", 16, 1.0)] * 3
    short = schedule_plan(PRESETS["lofi-anet-short"], 0, videos=16 * 40)
    assert [p.fidelity for p in short[14:18]] == ["s-lofi", "s-lofi", "t-lofi", "t-lofi"]
    assert [p.fidelity for p in short[32:34]] == ["st-lofi", "st-lofi"]
    multigrid = [schedule_plan(PRESETS["multigrid"], epoch, videos=300) for epoch in range(4)]
    assert [(p[0].fidelity, p[0].batch_size, len(p)) for p in multigrid] == [
        ("mg-1", 129, 3),
        ("mg-2", 64, 5),
        ("mg-3", 32, 10),
        ("mg-4", 16, 19),
    ]
    assert multigrid[1][0].lr_scale == pytest.approx(4.0)
    for preset in ("lofi-anet", "lofi-anet-short", "lofi-thumos"):
        for epoch in range(3):
            assert "full" not in {p.fidelity for p in schedule_plan(PRESETS[preset], epoch, 64)}


def _trainer(root, epochs=6, overrides=(), log=lambda line: None):
    settings = load_config(
        None,
        [
            "train.mode=lofi",
            "train.encoder=tiny",
            "train.run=lofi",
            f"train.epochs={epochs}",
            "train.head.dim=32",
            "train.head.levels=3",
            "train.warmup_epochs=1",
            "train.lr=0.003",
            *overrides,
        ],
    ).train
    annotations = AnnotationIndex(Store(str(root)))
    videos = annotations.videos("training")
    return LofiTrainer(
        TrainJob(
            Store(str(root)),
            "lofi",
            settings,
            videos,
            videos,
            parse_thresholds(settings.tiou),
            threads=2,
            schedule=PRESETS["demo"],
            preprocess=encoder_preprocess(settings.encoder),
        ),
        log=log,
    )


def test_lofi_trains_the_encoder_end_to_end(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    trainer = _trainer(root)
    encoder = trainer.model.encoder.net
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    trainer.run()
    after = encoder.state_dict()
    conv = "body.0.weight"
    assert not torch.equal(before[conv], after[conv])  # gradients reached the encoder
    for name in ("body.1.running_mean", "body.1.running_var"):  # statistics stay frozen
        assert torch.equal(before[name], after[name])
    steps = [r for r in trainer.rows if r["kind"] == "step"]
    assert [r["loss"] for r in steps][-1] < steps[0]["loss"]
    saved = torch.load(root / encoder_path("lofi"), weights_only=True)
    assert torch.equal(saved["encoder"][conv], after[conv])

    # The adapted encoder makes a new fingerprint and new features.
    first = run("extract", root, "--encoder", "tiny", "--schedule", "demo")
    second = run(
        "extract",
        root,
        "--encoder",
        "tiny",
        "--schedule",
        "demo",
        "--checkpoint",
        root / encoder_path("lofi"),
    )
    old_fp, new_fp = (
        re.search(r"^features (\w+): ", out, re.M).group(1) for out in (first, second)
    )
    assert old_fp != new_fp
    old, new = (read_features(Store(str(root)), fp) for fp in (old_fp, new_fp))
    assert not np.allclose(old["synth_0000"][0], new["synth_0000"][0])


def test_fp16_trains_with_loss_scaling_and_clips_unscaled_gradients(
    demo_shards, tmp_path, monkeypatch
):
    norms = {}
    clip = nn.utils.clip_grad_norm_

    def recorded(parameters, max_norm):
        norm = clip(parameters, max_norm)
        norms.setdefault(precision, []).append(float(norm))
        return norm

    monkeypatch.setattr(nn.utils, "clip_grad_norm_", recorded)
    trainers = {}
    for precision in ("fp32", "fp16"):  # CPU autocast stands in for a GPU's
        root = fresh_root(demo_shards, tmp_path / precision)
        trainers[precision] = _trainer(root, 1, [f"train.precision={precision}"])
        trainers[precision]._train_epoch()
    scaler = trainers["fp16"].scaler
    assert scaler.is_enabled() and not trainers["fp32"].scaler.is_enabled()
    assert scaler.get_scale() >= 2**10  # the loss is scaled up in the backward pass...
    # ...and the gradients scaled back before clipping: the norms are fp32's, not 2^16 x
    ratio = np.median(norms["fp16"]) / np.median(norms["fp32"])
    assert 0.2 < ratio < 5, norms


def test_recalibrated_batchnorm_averages_the_batches_given():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Dropout(0.5), nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3))
    norm = module[2]
    norm.running_mean.fill_(5.0)
    batches = [torch.randn(4, 2, 6) * 3 + 1 for _ in range(3)]

    def forward():
        for batch in batches:
            module(batch)

    assert recalibrate_batchnorm(module, forward) == 1
    # Dropout was off: the statistics are those of the convolution's plain outputs.
    outputs = [module[1](batch).detach() for batch in batches]
    means = torch.stack([out.mean((0, 2)) for out in outputs])
    variances = torch.stack([out.var((0, 2)) for out in outputs])
    assert torch.allclose(norm.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(norm.running_var, variances.mean(0), atol=1e-5)
    assert int(norm.num_batches_tracked) == 3
    assert norm.momentum == 0.1 and all(part.training for part in module.modules())

    with torch.device("meta"):  # a stand-in for a GPU: nothing is read back to the host
        module = nn.Sequential(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3)).eval()
        assert recalibrate_batchnorm(module, lambda: module(torch.empty(4, 2, 6))) == 1
    assert module[1].running_mean.device.type == "meta" and not module.training


def test_lofi_recalibrates_batchnorm_once_at_the_start(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    lines = []
    trainer = _trainer(root, 1, ["train.batchnorm=recalibrate"], lines.append)
    (line,) = [line for line in lines if line.startswith("batch norm")]
    assert re.fullmatch(
        r"batch norm: \d+ layers re-estimated on \d+ full-fidelity snippets "
        r"of \d+ training videos",
        line,
    )
    net = trainer.model.encoder.net
    recalibrated = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    fresh = _trainer(fresh_root(demo_shards, tmp_path / "fresh"), 1).model.encoder.net
    # From the same random initialisation, only the statistics moved, to the training
    # videos' full-fidelity snippets (the validation ones are not used).
    assert not torch.equal(recalibrated["body.1.running_mean"], fresh.body[1].running_mean)
    assert torch.equal(net.body[0].weight, fresh.body[0].weight)
    trainer.run()
    saved = torch.load(root / encoder_path("lofi"), weights_only=True)["encoder"]
    for name, value in recalibrated.items():  # frozen during training, kept in encoder.pt
        assert torch.equal(saved[name], value)
    # A rerun resumes from the checkpoint: nothing is re-estimated.
    lines.clear()
    _trainer(root, 2, ["train.batchnorm=recalibrate"], lines.append)
    assert not [line for line in lines if line.startswith("batch norm")]


@pytest.mark.ray
def test_lofi_run_on_ray_train_and_resume(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    args = [
        "train",
        root,
        "--mode",
        "lofi",
        "--schedule",
        "demo",
        "--encoder",
        "tiny",
        "--run",
        "L",
        "--epochs",
        "2",
        "--set",
        "train.head.dim=32",
        "--set",
        "train.head.levels=3",
    ]
    output = run(*args)
    assert "run L: 2 epochs on 1 workers" in output
    # The precision is resolved before the run (auto, without GPUs: fp32) and recorded.
    saved = yaml.safe_load((root / "runs/L/config.yaml").read_text())
    assert saved["train"]["precision"] == "fp32"
    predictions = json.loads((root / "runs/L/predictions.json").read_text())
    assert predictions["external_data"]["mode"] == "lofi"
    assert (root / "runs/L/encoder.pt").exists()
    assert "(resumed after epoch 2)" in run(*args)
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(root),
            "--mode",
            "lofi",
            "--schedule",
            "lofi-anet",
            "--encoder",
            "tiny",
            "--run",
            "M",
        ],
    )
    assert result.exit_code == 2 and "pass --schedule demo" in result.output, result.output


def test_shard_decoder_gpu_reads_on_the_workers_own_gpu(demo_shards, tmp_path, monkeypatch):
    # CPU-only CI: the worker's GPU and its video decoder are stand-ins (support/nvdec.py).
    # Checked: every fidelity's reader decodes on the worker's own device, and a step's
    # frames are the CPU decoder's.
    root = fresh_root(demo_shards, tmp_path)
    on_cpu = _trainer(root)
    with pytest.raises(ConfigError, match="train.shard_decoder is gpu, but this worker trains"):
        _trainer(root, overrides=["train.shard_decoder=gpu"]).reader("s-lofi")
    made = install_nvdec_stand_in(monkeypatch)
    on_gpu = _trainer(root, overrides=["train.shard_decoder=gpu"])
    on_gpu.device = torch.device("cuda", 0)  # where Ray Train put the worker's model
    videos = list(on_cpu.job.train_videos[:2])
    # A step of each fidelity the cycle trains on, over its epochs.
    steps = {plan.fidelity: plan for plans in on_cpu.plans for plan in plans}
    assert set(steps) == {"s-lofi", "t-lofi", "st-lofi"}
    for plan in steps.values():
        expected = on_cpu.read_batch(videos, plan, [0, 1])
        for video, other in zip(on_gpu.read_batch(videos, plan, [0, 1]), expected, strict=True):
            assert video.frames.shape == other.frames.shape
            assert (video.frames.int() - other.frames.int()).abs().max() <= 1
    assert made and {decoder.device for decoder in made} == {"cuda:0"}


def test_shard_decoder_gpu_is_refused_where_it_cannot_run(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    args = ["train", str(root), "--mode", "lofi", "--schedule", "demo", "--encoder", "tiny"]
    gpu = ["--set", "train.shard_decoder=gpu"]
    result = CliRunner().invoke(main, [*args, "--run", "G", *gpu])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "train.shard_decoder is gpu, but the workers train on CPUs" in line
    assert not (root / "runs/G").exists()
    run("materialize", root, "--schedule", "demo", "--encoding", "jpeg", *SHARDS)
    result = CliRunner().invoke(main, [*args, "--run", "J", *gpu])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "only h264 shards decode on a GPU, and the s-lofi shards store jpeg" in line


def test_batches_smaller_than_the_workers_are_refused_before_any_work(tmp_path):
    # As `plan --write` can make: one fidelity's batch holds a single video.
    schedule = config_to_dict(PRESETS["demo"])
    schedule["train"][0]["batch_size"] = 1
    path = tmp_path / "planned.yaml"
    path.write_text(yaml.safe_dump(schedule))
    root = tmp_path / "empty-root"  # nothing is read: the schedule alone decides
    args = ["train", str(root), "--mode", "lofi", "--schedule", str(path), "--encoder", "tiny"]
    result = CliRunner().invoke(main, [*args, "--run", "R", "--workers", "2"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "batches at s-lofi (1) are smaller than the 2 workers" in line
    assert "lofipipe plan --workers 2 --write" in line
    assert not root.exists()


def test_losa_trains_only_adapters_and_head(tmp_path, ray_local):
    synth_and_ingest(tmp_path, 4)
    schedule = tmp_path / "vit16.yaml"
    schedule.write_text(
        "full: {name: full, snippets: 8, frames: 16, size: 32}\n"
        "train: [{name: low, snippets: 4, frames: 16, size: 32}]\n"
    )
    root = tmp_path / "root"
    run("materialize", root, "--schedule", schedule, *SHARDS)
    settings = load_config(
        None,
        [
            "train.mode=losa",
            "train.encoder=vit_s",
            "train.run=losa",
            "train.epochs=3",
            "train.head.dim=32",
            "train.head.levels=3",
            "train.batch_size=2",
            "train.warmup_epochs=1",
        ],
    ).train
    annotations = AnnotationIndex(Store(str(root)))
    videos = annotations.videos("training")
    trainer = LosaTrainer(
        TrainJob(
            Store(str(root)),
            "losa",
            settings,
            videos,
            videos,
            parse_thresholds(settings.tiou),
            threads=2,
            schedule=load_schedule(str(schedule)),
            preprocess=encoder_preprocess(settings.encoder),
        ),
        log=lambda line: None,
    )
    losa = trainer.model.encoder.net
    before = {k: v.clone() for k, v in losa.state_dict().items()}
    assert {p.fidelity for plan in trainer.plans for p in plan} == {"full"}
    trainer.run()
    after = losa.state_dict()
    backbone = [k for k in after if k.startswith("backbone.")]
    adapters = [k for k in after if not k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    assert any(not torch.equal(before[k], after[k]) for k in adapters)
    output = run(
        "extract",
        root,
        "--encoder",
        "vit_s",
        "--losa",
        "--schedule",
        schedule,
        "--checkpoint",
        root / encoder_path("losa"),
    )
    assert "RANDOM" not in output and re.search(r"^features \w+: 2 parts", output, re.M)


@pytest.mark.ray
def test_lofi_recipe_runs_each_stage_and_resumes(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    args = [
        "train",
        root,
        "--recipe",
        "lofi",
        "--schedule",
        "demo",
        "--encoder",
        "tiny",
        "--run",
        "R",
        "--epochs",
        "3",
        "--set",
        "train.encoder_epochs=2",
        "--set",
        "train.min_steps=0",
        "--set",
        "train.head.dim=32",
        "--set",
        "train.head.levels=3",
    ]
    output = run(*args)
    assert "run R-lofi: 2 epochs" in output and "run R-head: 3 epochs" in output
    adapted = re.search(r"^features (\w+): ", output, re.M).group(1)
    lineage = json.loads((root / f"features/{adapted}/lineage.json").read_text())
    assert lineage["checkpoint"].endswith("runs/R-lofi/encoder.pt")
    config = (root / "runs/R-head/config.yaml").read_text()
    assert f"features: {adapted}" in config
    again = run(*args)  # every stage is done: nothing is trained or extracted again
    assert "(resumed after epoch 2)" in again and "(resumed after epoch 3)" in again
    assert "(0 written, 2 already done)" in again


@pytest.mark.ray
@pytest.mark.slow
def test_lofi_resumes_after_a_killed_worker(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    outputs = []
    thread = threading.Thread(
        target=lambda: outputs.append(
            run(
                "train",
                root,
                "--mode",
                "lofi",
                "--schedule",
                "demo",
                "--encoder",
                "tiny",
                "--run",
                "K",
                "--epochs",
                "12",
                "--set",
                "train.head.dim=32",
                "--set",
                "train.head.levels=3",
            )
        )
    )
    earlier = train_worker_pids()
    thread.start()
    kill_a_train_worker_when(root / "runs/K/checkpoints/epoch-0002.pt", thread.is_alive, earlier)
    thread.join(timeout=300)
    assert outputs and "run K: 12 epochs" in outputs[0]
    assert "worker group restarted: resumed after epoch" in outputs[0]
    rows = Store(str(root)).read_table("runs/K/metrics.parquet").to_pylist()
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == list(range(1, 13))
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(1, 13))
    assert (root / encoder_path("K")).exists()
