"""`lofipipe features import`: feature files in ActionFormer's and OpenTAD's layouts become a
feature set that head training and eval use; reruns, changed files, bad files.

The files are written here as ActionFormer's THUMOS-14 release holds them
(happyharrycn/actionformer_release, configs/thumos_i3d.yaml and
libs/datasets/thumos14.py): `<video_id>.npy`, a float32 (T, C) array, a feature every
`feat_stride` frames over `num_frames`-frame clips at `default_fps`, the clips inside the
video (issue #5 there: (frames - num_frames) / feat_stride features).
"""

import hashlib
import io
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support.cli import SHARDS, fresh_root, run, synth_and_ingest

from lofipipe.cli import main
from lofipipe.data.features import read_features
from lofipipe.schemas.schedule import schedule_from_lineage
from lofipipe.storage import Store
from lofipipe.training.feature_set import FeatureSet

pytestmark = pytest.mark.ray

FPS, STRIDE, FRAMES, DIM = 10.0, 4, 8, 16
TIME = ["--fps", FPS, "--stride", STRIDE, "--frames", FRAMES]
SMALL = [
    "--set",
    "train.head.dim=32",
    "--set",
    "train.head.levels=3",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.warmup_epochs=1",
    "--set",
    "train.min_steps=0",
]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, ray_local):
    """`base/root`: 8 synthetic 10-second videos ingested (2 of them validation)."""
    base = tmp_path_factory.mktemp("import-features")
    synth_and_ingest(base, 8)
    return base


def _durations(root) -> dict[str, float]:
    rows = Store(str(root)).read_table("manifest/videos.parquet").to_pylist()
    return {row["video_id"]: row["duration"] for row in rows}


def _snippets(duration: float) -> int:
    """ActionFormer's count: every clip that lies inside the video."""
    return int((round(duration * FPS) - FRAMES) // STRIDE) + 1


def _arrays(root, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        video_id: rng.normal(size=(_snippets(duration), DIM)).astype(np.float32)
        for video_id, duration in sorted(_durations(root).items())
    }


def _write(folder, arrays) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for video_id, values in arrays.items():
        np.save(folder / f"{video_id}.npy", values)


def _import(root, folder, *args) -> str:
    return run("features", "import", root, "--from", folder, *TIME, *SHARDS, *args)


def _fingerprint(output: str) -> str:
    return re.search(r"^features (\w+): ", output, re.MULTILINE).group(1)


def _files(folder) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_actionformer_files_train_and_evaluate_like_extracted_ones(ingested, tmp_path):
    root = fresh_root(ingested, tmp_path)
    arrays = _arrays(root)
    _write(tmp_path / "i3d", arrays)
    output = _import(root, tmp_path / "i3d", "--format", "actionformer")
    fingerprint = _fingerprint(output)
    assert "8 videos imported from" in output and "4 parts (4 written, 0 already done)" in output
    assert "missing" not in output and "not imported" not in output

    lineage = json.loads((root / f"features/{fingerprint}/lineage.json").read_text())
    digests = "".join(
        f"{p.name}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in sorted((tmp_path / "i3d").iterdir())
    )
    assert lineage["lineage"] == "imported" and lineage["format"] == "actionformer"
    assert lineage["checksum"] == hashlib.sha256(digests.encode()).hexdigest()
    assert (lineage["fps"], lineage["stride"], lineage["frames"], lineage["offset"]) == (
        FPS,
        STRIDE,
        FRAMES,
        0.0,
    )
    assert lineage["dim"] == DIM and lineage["source"] == str(tmp_path / "i3d")
    schedule = schedule_from_lineage(lineage)
    assert (schedule.sampling, schedule.fps, schedule.stride) == ("stride", FPS, STRIDE)
    assert schedule.full.frames == FRAMES
    assert schedule.full.snippets == max(len(v) for v in arrays.values())

    features = read_features(Store(str(root)), fingerprint)
    assert sorted(features) == sorted(arrays)
    for video_id, (values, spans) in features.items():
        assert np.array_equal(values, arrays[video_id])
        index = np.arange(len(values))
        # ActionFormer's feature grid: (i * feat_stride + 0.5 * num_frames) / fps.
        assert np.allclose(spans.mean(axis=1), (index * STRIDE + 0.5 * FRAMES) / FPS)
        assert np.allclose(spans[:, 1] - spans[:, 0], FRAMES / FPS)
    data = FeatureSet(Store(str(root)), fingerprint)
    assert data.dim == DIM and data.schedule.sampling == "stride"
    for listing in (run("features", root), run("features", "list", root)):
        assert fingerprint in listing and "imported:actionformer" in listing
        assert f"imported from {tmp_path / 'i3d'}" in listing and "1 feature sets" in listing
    assert "imported:actionformer, 8 videos (done)" in run("status", root)

    trained = run(
        "train",
        root,
        "--mode",
        "head",
        "--features",
        fingerprint,
        "--run",
        "imp",
        "--epochs",
        2,
        *SMALL,
    )
    assert "run imp: 2 epochs on 1 workers" in trained
    assert not (root / "runs/imp/model").exists()  # no encoder to bundle with the head
    predictions = json.loads((root / "runs/imp/predictions.json").read_text())
    validation = sorted(v for v in arrays if v in data.videos("validation"))
    assert sorted(predictions["results"]) == validation and len(validation) == 2
    scored = json.loads(
        run(
            "eval",
            "--gt",
            root / "annotations.parquet",
            "--pred",
            root / "runs/imp/predictions.json",
            "--subset",
            "validation",
            "--format",
            "json",
        )
    )
    saved = json.loads((root / "runs/imp/evaluation.json").read_text())
    assert scored["videos"] == 2 and scored["average_mAP"] == pytest.approx(saved["average_mAP"])

    # The same files again: nothing is written.
    before = _files(root / f"features/{fingerprint}")
    again = _import(root, tmp_path / "i3d", "--format", "actionformer")
    assert _fingerprint(again) == fingerprint and "(0 written, 4 already done)" in again
    assert _files(root / f"features/{fingerprint}") == before
    # A changed file is a new feature set; the old one stays as it was.
    arrays["synth_0002"][0, 0] += 1.0
    _write(tmp_path / "i3d", {"synth_0002": arrays["synth_0002"]})
    changed = _fingerprint(_import(root, tmp_path / "i3d", "--format", "actionformer"))
    assert changed != fingerprint and _files(root / f"features/{fingerprint}") == before
    assert np.array_equal(
        read_features(Store(str(root)), changed)["synth_0002"][0], arrays["synth_0002"]
    )


def test_bad_files_are_reported_and_the_others_imported_as_in_a_clean_run(ingested, tmp_path):
    root = fresh_root(ingested, tmp_path / "clean")
    arrays = _arrays(root)
    good = ["synth_0000", "synth_0001", "synth_0002", "synth_0007"]
    _write(tmp_path / "good", {v: arrays[v] for v in good})
    clean = _fingerprint(_import(root, tmp_path / "good", "--format", "actionformer"))

    messy = tmp_path / "messy"
    _write(messy, {v: arrays[v] for v in good})
    too_long = np.concatenate([arrays["synth_0003"], np.zeros((3, DIM), np.float32)])
    np.save(messy / "synth_0003.npy", too_long)
    (messy / "synth_0004.npy").write_bytes(b"\x93NUMPY but cut short")
    # synth_0005 has no file.
    np.save(messy / "synth_0006.npy", arrays["synth_0006"][:10])  # too short
    np.save(messy / "not_a_video.npy", arrays["synth_0000"])
    (messy / "README.txt").write_text("features")
    messy_root = fresh_root(ingested, tmp_path / "messy-root")
    result = CliRunner().invoke(
        main,
        [
            "features",
            "import",
            str(messy_root),
            "--from",
            str(messy),
            "--format",
            "actionformer",
            *map(str, TIME + SHARDS),
            "--strict",
        ],
    )
    output = result.output
    assert result.exit_code == 3, output  # --strict: 4 videos without features
    assert "error: --strict: 4 failed videos" in output
    assert "4 videos imported" in output and "2 parts (2 written, 0 already done)" in output
    assert "missing: 1 videos without a feature file: synth_0005" in output
    assert "not imported: 4 files (not_in_manifest 1, too_long 1, too_short 1, unreadable 1)" in (
        output
    )
    end = ((len(too_long) - 1) * STRIDE + FRAMES) / FPS
    assert f"  synth_0003.npy: too_long: {len(too_long)} snippets end at {end:.2f} s" in output
    assert "  synth_0004.npy: unreadable: " in output
    assert "  synth_0006.npy: too_short: 10 snippets end at 4.40 s, covering less than 90%" in (
        output
    )
    assert "  not_a_video.npy: not_in_manifest: no video 'not_a_video' in the manifest" in output
    assert "ignored: 1 files that are not .npy, .npz, .pt" in output
    fingerprint = _fingerprint(output)
    lineage = json.loads((messy_root / f"features/{fingerprint}/lineage.json").read_text())
    assert lineage["missing"] == ["synth_0005"] and sorted(lineage["issues"]) == [
        "not_a_video.npy",
        "synth_0003.npy",
        "synth_0004.npy",
        "synth_0006.npy",
    ]

    expected = read_features(Store(str(root)), clean)
    found = read_features(Store(str(messy_root)), fingerprint)
    assert sorted(found) == sorted(expected) == good
    for video_id, (values, spans) in expected.items():
        assert np.array_equal(found[video_id][0], values)
        assert np.array_equal(found[video_id][1], spans)
    for part in (0, 1):
        stats = [
            json.loads((r / f"features/{f}/part-0000{part}.stats.json").read_text())
            for r, f in ((root, clean), (messy_root, fingerprint))
        ]
        assert stats[0]["videos"] == stats[1]["videos"]
        assert stats[0]["source_fingerprints"] == stats[1]["source_fingerprints"]


def _pt(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_pt_npz_and_channel_first_files(ingested, tmp_path):
    root = fresh_root(ingested, tmp_path)
    arrays = _arrays(root)
    folder = tmp_path / "opentad"
    folder.mkdir()
    tensor = {v: torch.from_numpy(a) for v, a in arrays.items()}
    (folder / "synth_0000.pt").write_bytes(_pt(tensor["synth_0000"]))
    (folder / "synth_0001.pt").write_bytes(_pt({"feats": tensor["synth_0001"]}))
    np.savez(folder / "synth_0002.npz", feats=arrays["synth_0002"])  # OpenTAD's key
    np.savez(folder / "synth_0003.npz", arrays["synth_0003"])
    np.save(folder / "synth_0004.npy", arrays["synth_0004"].T)  # (C, T)
    _write(folder, {v: arrays[v] for v in ("synth_0005", "synth_0006", "synth_0007")})

    output = _import(root, folder, "--format", "opentad")
    assert "8 videos imported" in output and "1 files held (C, T) arrays: transposed" in output
    features = read_features(Store(str(root)), _fingerprint(output))
    assert sorted(features) == sorted(arrays)
    for video_id, (values, _) in features.items():
        assert np.array_equal(values, arrays[video_id]), video_id

    # ActionFormer's layout is (T, C) only: the (C, T) file is named, with a hint.
    other = fresh_root(ingested, tmp_path / "af")
    strict = _import(other, folder, "--format", "actionformer")
    assert "7 videos imported" in strict
    assert "  synth_0004.npy: too_short: " in strict
    assert "its second axis would fit; a (C, T) file? --format opentad reads those" in strict


def test_files_from_any_storage_url(ingested, tmp_path):
    root = fresh_root(ingested, tmp_path)
    arrays = _arrays(root)
    source = Store("memory://lofipipe-import-test/npy")
    for video_id, values in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, values)
        source.write_bytes(f"{video_id}.npy", buffer.getvalue())
    output = _import(root, "memory://lofipipe-import-test/npy", "--format", "npy")
    assert "8 videos imported from memory://lofipipe-import-test/npy (npy)" in output
    features = read_features(Store(str(root)), _fingerprint(output))
    assert all(np.array_equal(features[v][0], arrays[v]) for v in arrays)


def test_missing_settings_and_inputs_are_clear_errors(ingested, tmp_path):
    root = fresh_root(ingested, tmp_path)
    base = ["features", "import", str(root), "--from", str(tmp_path / "none")]
    result = CliRunner().invoke(main, [*base, "--fps", "30", "--stride", "4"])
    assert result.exit_code == 2 and "error: feature_import.frames: required (--frames)" in (
        result.output
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.json").write_text("{}")
    result = CliRunner().invoke(
        main, ["features", "import", str(root), "--from", str(empty), *map(str, TIME)]
    )
    assert result.exit_code == 1
    assert f"error: no .npy, .npz, .pt files directly under {empty}" in result.output
    _write(tmp_path / "npy", {"synth_0000": np.zeros((24, 4), np.float32)})
    result = CliRunner().invoke(
        main,
        [
            "features",
            "import",
            str(tmp_path / "bare"),
            "--from",
            str(tmp_path / "npy"),
            *map(str, TIME),
        ],
    )
    assert result.exit_code == 1 and "run lofipipe ingest first" in result.output
