"""Feature extraction on a real local Ray: equality with an in-process forward, export,
regeneration with a new checkpoint, incremental reruns, S3."""

import json
import re
import shutil
from pathlib import Path

import fastparquet
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from support.cli import SHARDS, fresh_root, run
from support.nvdec import install_nvdec_stand_in

from lofipipe.cli import main
from lofipipe.data.features import read_features
from lofipipe.data.snippets import SnippetReader
from lofipipe.models.registry import build_encoder
from lofipipe.schemas.schedule import PRESETS
from lofipipe.storage import Store
from lofipipe.workers.feature_extractor import FeatureExtractor, PartJob

pytestmark = pytest.mark.ray


def _fingerprint(output):
    return re.search(r"^features (\w+): ", output, re.MULTILINE).group(1)


def test_features_equal_an_in_process_forward(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    output = run(
        "extract", root, "--encoder", "tiny", "--schedule", "demo", "--export", tmp_path / "npy"
    )
    assert "WARNING: no checkpoint given" in output
    fingerprint = _fingerprint(output)
    features = read_features(Store(str(root)), fingerprint)
    assert sorted(features) == [f"synth_{i:04d}" for i in range(4)]
    torch.manual_seed(0)
    encoder = build_encoder("tiny").eval()
    for video in SnippetReader(Store(str(root)), "full").videos():
        with torch.no_grad():
            direct = encoder(video.frames).numpy()
        values, spans = features[video.video_id]
        assert values.shape == (32, 128)
        assert np.allclose(values, direct, atol=1e-5)
        assert np.allclose(spans[:, 0], video.start) and np.allclose(spans[:, 1], video.end)
        exported = np.load(tmp_path / "npy" / f"{video.video_id}.npy")
        assert exported.shape == (32, 128) and exported.dtype == np.float32
        assert np.allclose(exported, values)
        sidecar = json.loads((tmp_path / "npy" / f"{video.video_id}.json").read_text())
        assert np.allclose(sidecar["snippet_center"], video.center)
        assert sidecar["feature_stride_s"] == pytest.approx(10 / 32)
        assert sidecar["clip_length_frames"] == 8
    part = root / f"features/{fingerprint}/part-00000.parquet"
    assert pq.ParquetFile(part).num_row_groups == 2  # one per video
    assert list(fastparquet.ParquetFile(str(part)).to_pandas()["video_id"]) == [
        "synth_0000",
        "synth_0001",
    ]
    lineage = json.loads((root / f"features/{fingerprint}/lineage.json").read_text())
    assert lineage["encoder"] == "tiny" and lineage["weights"] == "random:seed=0"

    again = run("extract", root, "--encoder", "tiny", "--schedule", "demo")
    assert "(0 written, 2 already done)" in again and _fingerprint(again) == fingerprint
    # The dataset shrinks to one shard: the feature part of the shard that left goes too.
    run("materialize", root, "--schedule", "demo", "--set", "materialize.videos_per_shard=4")
    shrunk = run("extract", root, "--encoder", "tiny", "--schedule", "demo")
    assert "1 parts from shards (1 written, 0 already done), 4 videos" in shrunk
    assert sorted(p.name for p in (root / f"features/{fingerprint}").glob("part-*")) == [
        "part-00000.parquet",
        "part-00000.stats.json",
    ]
    assert sorted(read_features(Store(str(root)), fingerprint)) == sorted(features)


def test_a_new_checkpoint_regenerates_beside_the_old(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    first = _fingerprint(run("extract", root, "--encoder", "tiny", "--schedule", "demo"))
    before = {p.name: p.read_bytes() for p in (root / "features" / first).iterdir()}
    torch.manual_seed(7)
    adapted = build_encoder("tiny")
    torch.save({"encoder": adapted.net.state_dict()}, tmp_path / "adapted.pth")
    output = run(
        "extract",
        root,
        "--encoder",
        "tiny",
        "--schedule",
        "demo",
        "--checkpoint",
        tmp_path / "adapted.pth",
    )
    second = _fingerprint(output)
    assert second != first and "RANDOM" not in output
    assert "checkpoint read as lofipipe" in output  # the layout, named
    assert {p.name: p.read_bytes() for p in (root / "features" / first).iterdir()} == before
    old, new = (read_features(Store(str(root)), f) for f in (first, second))
    assert not np.allclose(old["synth_0000"][0], new["synth_0000"][0])
    listing = run("features", root)
    assert first in listing and second in listing and "2 feature sets" in listing
    assert "adapted.pth" in listing


def _assert_same_features(left: dict, right: dict) -> None:
    assert sorted(left) == sorted(right)
    for video_id, (values, spans) in left.items():
        assert np.allclose(values, right[video_id][0], atol=1e-5)
        assert np.allclose(spans, right[video_id][1])


def test_from_videos_needs_no_shards_and_equals_raw_shards(demo_shards, tmp_path):
    shards_root = fresh_root(demo_shards, tmp_path / "a")
    run("materialize", shards_root, "--schedule", "demo", "--encoding", "raw", *SHARDS)
    from_shards = run("extract", shards_root, "--encoder", "tiny", "--schedule", "demo", *SHARDS)
    videos_root = fresh_root(demo_shards, tmp_path / "b")
    shutil.rmtree(videos_root / "shards")
    from_videos = run(
        "extract",
        videos_root,
        "--encoder",
        "tiny",
        "--schedule",
        "demo",
        "--from",
        "videos",
        *SHARDS,
        "--export",
        tmp_path / "npy",
    )
    assert "2 parts from videos (2 written, 0 already done), 4 videos, 0 failed" in from_videos
    fingerprint = _fingerprint(from_videos)
    assert fingerprint == _fingerprint(from_shards)  # the same pixels, the same features
    _assert_same_features(
        read_features(Store(str(videos_root)), fingerprint),
        read_features(Store(str(shards_root)), fingerprint),
    )
    sidecar = json.loads((tmp_path / "npy/synth_0001.json").read_text())
    assert sidecar["shape"] == [32, 128] and sidecar["clip_length_frames"] == 8

    again = run(
        "extract",
        videos_root,
        "--encoder",
        "tiny",
        "--schedule",
        "demo",
        "--from",
        "videos",
        *SHARDS,
    )
    assert "(0 written, 2 already done)" in again


def test_from_videos_a_broken_video_fails_alone(demo_shards, tmp_path):
    clean_root = fresh_root(demo_shards, tmp_path / "clean")
    clean = run(
        "extract",
        clean_root,
        "--encoder",
        "tiny",
        "--schedule",
        "demo",
        "--from",
        "videos",
        *SHARDS,
    )
    root = fresh_root(demo_shards, tmp_path / "broken")
    manifest = pq.read_table(root / "manifest/videos.parquet").to_pylist()
    broken = next(row["uri"] for row in manifest if row["video_id"] == "synth_0002")
    copy = tmp_path / "synth_0002.mp4"
    copy.write_bytes(Path(broken).read_bytes()[:3000])  # cut short after ingest checked it
    rows = [
        {**row, "uri": str(copy)} if row["video_id"] == "synth_0002" else row for row in manifest
    ]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=pq.read_schema(root / "manifest/videos.parquet")),
        root / "manifest/videos.parquet",
    )
    output = run(
        "extract", root, "--encoder", "tiny", "--schedule", "demo", "--from", "videos", *SHARDS
    )
    assert re.search(r"3 videos, 1 failed \((decode_error|too_short) 1\)", output), output
    fingerprint = _fingerprint(output)
    features = read_features(Store(str(root)), fingerprint)
    expected = read_features(Store(str(clean_root)), _fingerprint(clean))
    del expected["synth_0002"]
    _assert_same_features(features, expected)
    stats = json.loads((root / f"features/{fingerprint}/part-00001.stats.json").read_text())
    assert list(stats["failed"]) == ["synth_0002"] and "\n" not in stats["failed"]["synth_0002"]


def test_encoder_and_schedule_must_agree(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    result = CliRunner().invoke(
        main, ["extract", str(root), "--encoder", "vit_s", "--schedule", "demo"]
    )
    assert result.exit_code == 2
    assert "vit_s takes 16-frame snippets, the demo schedule's full fidelity has 8" in result.output
    result = CliRunner().invoke(
        main, ["extract", str(root), "--encoder", "tiny", "--schedule", "lofi-anet"]
    )
    assert result.exit_code == 2
    assert (
        "holds snippets of schedule 'demo', not of 'lofi-anet': pass --schedule demo"
        in result.output
    )
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": build_encoder("tsm_r18").net.state_dict()}, bad)
    result = CliRunner().invoke(
        main,
        ["extract", str(root), "--encoder", "tiny", "--schedule", "demo", "--checkpoint", str(bad)],
    )
    assert result.exit_code == 1 and "bad.pth: does not fit the model: missing" in result.output


@pytest.mark.s3
def test_extract_on_s3(demo_shards, tmp_path, s3_bucket):
    bucket, options = s3_bucket
    root = Store(f"s3://{bucket}/root", options)
    for path in sorted((demo_shards / "root").rglob("*")):
        if path.is_file():
            root.write_bytes(str(path.relative_to(demo_shards / "root")), path.read_bytes())
    pairs = [f"--storage-option={k}={v}" for k, v in options.items()]
    output = run(
        "extract",
        root.url,
        "--encoder",
        "tiny",
        "--schedule",
        "demo",
        "--export",
        f"s3://{bucket}/npy",
        *pairs,
    )
    fingerprint = _fingerprint(output)
    remote = read_features(root, fingerprint)
    local_root = fresh_root(demo_shards, tmp_path)
    run("extract", local_root, "--encoder", "tiny", "--schedule", "demo")
    local = read_features(Store(str(local_root)), fingerprint)
    assert sorted(remote) == sorted(local)
    for video_id, (values, _) in remote.items():
        assert np.allclose(values, local[video_id][0], atol=1e-5)
    assert Store(f"s3://{bucket}/npy", options).exists("synth_0000.npy")


def test_preprocessing_is_part_of_the_fingerprint_and_checked_on_shards(demo_shards, tmp_path):
    """Shards made for tiny (squash) serve any preset that resizes alike (videomaev2-tad
    only normalizes differently: a new fingerprint); another crop is refused with the
    setting that reads them."""
    from lofipipe.errors import ConfigError
    from lofipipe.pipeline.extract import plan_extract
    from lofipipe.schemas.config import load_config
    from lofipipe.schemas.schedule import PRESETS, schedule_from_lineage

    root = Store(str(fresh_root(demo_shards, tmp_path)))

    def plan(*sets):
        return plan_extract(load_config(None, ["materialize.schedule=demo", *sets]), root, {})

    squash = plan()
    assert squash.lineage["preprocess"]["preset"] == "squash"
    assert squash.lineage["mean"] == (0.5, 0.5, 0.5)
    assert schedule_from_lineage(json.loads(json.dumps(squash.lineage))) == PRESETS["demo"]
    unit = plan("materialize.preprocess=videomaev2-tad")
    assert unit.lineage["mean"] == (0.0, 0.0, 0.0) and unit.lineage["std"] == (1.0, 1.0, 1.0)
    assert unit.fingerprint != squash.fingerprint
    with pytest.raises(ConfigError) as refused:
        plan("materialize.preprocess=tsm-test")
    message = str(refused.value)
    assert "holds snippets preprocessed as squash or videomaev2-tad" in message
    assert "pass --set materialize.preprocess=squash to use them" in message
    assert "--set materialize.preprocess=tsm-test" in message


def test_precision_is_part_of_the_fingerprint(demo_shards, tmp_path):
    """fp16 or bf16 features from GPUs never share a fingerprint with fp32 ones; fp32
    keeps the fingerprint it had before precision was a setting."""
    from lofipipe.pipeline.extract import plan_extract
    from lofipipe.schemas.config import load_config

    root = Store(str(fresh_root(demo_shards, tmp_path)))

    def plan(*sets):
        return plan_extract(load_config(None, ["materialize.schedule=demo", *sets]), root, {})

    on_cpus = plan()  # auto, on a cluster without GPUs: fp32
    assert (on_cpus.gpus, on_cpus.precision) == (False, "fp32")
    assert on_cpus.lineage["precision"] == "fp32"
    assert on_cpus.fingerprint == plan("extract.precision=fp32").fingerprint
    fingerprints = {on_cpus.fingerprint}
    for precision in ("bf16", "fp16"):
        reduced = plan(f"extract.precision={precision}")
        assert reduced.lineage["precision"] == precision
        fingerprints.add(reduced.fingerprint)
    assert len(fingerprints) == 3


def test_the_encoder_normalizes_as_its_preset():
    from lofipipe.schemas.preprocess import PREPROCESS_PRESETS

    vit = build_encoder("vit_s")  # videomaev2-tad: pixels / 255, no mean/std
    assert vit.preprocess.name == "videomaev2-tad"
    assert torch.allclose(vit.mean, torch.zeros(3).view(1, 1, 3, 1, 1))
    assert torch.allclose(vit.std, torch.full((1, 1, 3, 1, 1), 255.0))
    imagenet = build_encoder("vit_s", preprocess=PREPROCESS_PRESETS["squash"])
    assert torch.allclose(imagenet.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]) * 255)
    assert build_encoder("tsm_r18").preprocess.name == "tsm-test"
    assert build_encoder("tiny").preprocess.name == "squash"


def test_gpu_shard_decoding_gives_the_cpu_decodes_features(demo_shards, tmp_path, monkeypatch):
    # CPU-only CI: the actor's GPU decoder is a stand-in (support/nvdec.py) and its encoder
    # stays on the CPU. Checked: with extract.shard_decoder gpu a part's snippets are
    # decoded on the actor's own device, and its features are those of the CPU decode.
    root = Store(str(fresh_root(demo_shards, tmp_path)))
    made = install_nvdec_stand_in(monkeypatch)
    torch.manual_seed(0)
    encoder = build_encoder("tiny").eval()
    shard = SnippetReader(root, "full").shards()[0]
    features = {}
    for name, device, decoder in (("cpu", "cpu", "cpu"), ("gpu", "cuda", "gpu")):
        extractor = FeatureExtractor(
            root, PRESETS["demo"], lambda: encoder, name, device=device, shard_decoder=decoder
        )
        extractor._model = encoder  # the stand-in GPU has no memory: encode on the CPU
        extractor.process(PartJob(0, shard=shard))
        features[name] = read_features(root, name)
    assert [decoder.device for decoder in made] and {d.device for d in made} == {"cuda"}
    assert sorted(features["gpu"]) == sorted(features["cpu"]) == ["synth_0000", "synth_0001"]
    for video, (values, spans) in features["cpu"].items():
        assert np.allclose(features["gpu"][video][0], values, atol=1e-4)
        assert np.array_equal(features["gpu"][video][1], spans)


def test_gpu_shard_decoding_is_refused_where_it_cannot_run(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    args = ["extract", str(root), "--encoder", "tiny", "--schedule", "demo"]
    gpu = ["--set", "extract.shard_decoder=gpu"]
    for extra, message in (
        ([], "extract.shard_decoder is gpu, but the encoder actors run on CPUs"),
        (["--from", "videos"], "extract.shard_decoder is gpu, which decodes shards"),
    ):
        result = CliRunner().invoke(main, [*args, *gpu, *extra])
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert message in line
    assert not (root / "features").exists()
