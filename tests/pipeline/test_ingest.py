"""Ingest on a real local Ray: good and bad inputs, reruns, S3 on moto's server."""

import json
import shutil

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.cli import run
from support.media import write_audio_only, write_truncated, write_video
from support.reliability import record

from lofipipe.cli import main
from lofipipe.data.video_ids import video_id_for_file
from lofipipe.schemas.tables import ANNOTATIONS, ERRORS, MANIFEST
from lofipipe.storage import Store

pytestmark = pytest.mark.ray

HOSTILE = "$(touch pwned); évil näme"


def _dataset(folder):
    videos = folder / "videos"
    good = write_video(videos / "good.mp4", seconds=3)
    write_video(videos / "talky.mp4", seconds=2, audio=True)
    write_video(videos / "rotated.mp4", rotation=270)
    write_video(videos / f"{HOSTILE}.mp4")
    write_truncated(videos / "truncated.mp4", good)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("not a video at all\n")
    write_audio_only(videos / "podcast.mp4")
    (videos / "readme.txt").write_text("ignored: not a video extension\n")
    database = {
        "good": {
            "subset": "training",
            "duration": 3.0,
            "annotations": [
                {"segment": [0.5, 1.5], "label": "move"},
                {"segment": [2.5, 4.0], "label": "move"},
            ],
        },
        "talky": {
            "subset": "validation",
            "duration": 2.0,
            "annotations": [{"segment": [0.2, 1.0], "label": "talk"}],
        },
        HOSTILE: {
            "subset": "training",
            "duration": 2.0,
            "annotations": [{"segment": [0.0, 1.0], "label": "move"}],
        },
        "not_downloaded": {
            "subset": "training",
            "duration": 9.0,
            "annotations": [{"segment": [1, 2], "label": "move"}],
        },
    }
    (folder / "annotations.json").write_text(json.dumps({"database": database}))
    return videos, folder / "annotations.json"


def _ingest(root, videos, annotations, *extra):
    result = CliRunner().invoke(
        main,
        ["ingest", str(root), "--videos", str(videos), "--annotations", str(annotations), *extra],
    )
    return result


def _manifest(root):
    return {
        row["video_id"]: row for row in pq.read_table(root / "manifest/videos.parquet").to_pylist()
    }


def test_good_and_bad_inputs(ray_local, tmp_path):
    videos, annotations = _dataset(tmp_path / "data")
    root = tmp_path / "root"
    result = _ingest(root, videos, annotations)
    assert result.exit_code == 0, result.output
    rows = _manifest(root)
    hostile_id = video_id_for_file(f"{HOSTILE}.mp4")
    assert sorted(rows) == sorted(
        ["empty", "good", hostile_id, "notes", "podcast", "rotated", "talky", "truncated"]
    )
    status = {vid: (row["status"], (row["error"] or "").split(":")[0]) for vid, row in rows.items()}
    assert status == {
        "good": ("ok", ""),
        "talky": ("ok", ""),
        "rotated": ("ok", ""),
        hostile_id: ("ok", ""),
        "truncated": ("failed", "not_a_video"),
        "empty": ("failed", "empty_file"),
        "notes": ("failed", "not_a_video"),
        "podcast": ("failed", "no_video_stream"),
    }
    assert rows["rotated"]["rotation"] == 270
    assert rows["talky"]["has_audio"] is True
    assert rows["good"]["duration"] == pytest.approx(3.0)
    assert rows["good"]["subset"] == "training" and rows["talky"]["subset"] == "validation"
    assert rows[hostile_id]["uri"] == str(videos / f"{HOSTILE}.mp4")
    assert (
        "status: 4 ok, 4 failed (empty_file 1, no_video_stream 1, not_a_video 2)" in result.output
    )
    assert "hours in the ok videos" in result.output
    assert "other files: 1 skipped, not a video extension (.txt 1;" in result.output
    assert "issues: clipped_segment 1, unknown_video 1" in result.output
    assert (
        "annotations for video 'not_downloaded', which is not among the listed videos"
        in result.output
    )
    assert not (tmp_path / "pwned").exists()

    segments = pq.read_table(root / "annotations.parquet")
    ANNOTATIONS.check(segments, "annotations")
    assert [(r["video_id"], r["label"], r["start"], r["end"]) for r in segments.to_pylist()] == [
        (hostile_id, "move", 0.0, 1.0),
        ("good", "move", 0.5, 1.5),
        ("good", "move", 2.5, 3.0),
        ("talky", "talk", 0.2, 1.0),
    ]
    errors = pq.read_table(root / "manifest/errors.parquet")
    ERRORS.check(errors, "errors")
    reasons = sorted((r["stage"], r["reason"]) for r in errors.to_pylist())
    assert reasons == [
        ("annotations", "clipped_segment"),
        ("annotations", "unknown_video"),
        ("ingest", "empty_file"),
        ("ingest", "no_video_stream"),
        ("ingest", "not_a_video"),
        ("ingest", "not_a_video"),
        ("ingest", "skipped_extension"),
    ]
    assert (root / "manifest/ingest.yaml").read_text().startswith("# Resolved by: lofipipe")
    MANIFEST.check(pq.read_table(root / "manifest/videos.parquet"), "manifest")


def test_rerun_skips_unchanged_and_picks_up_new(ray_local, tmp_path):
    videos, annotations = _dataset(tmp_path / "data")
    root = tmp_path / "root"
    assert _ingest(root, videos, annotations).exit_code == 0
    first = _manifest(root)

    again = _ingest(root, videos, annotations)
    assert again.exit_code == 0, again.output
    # The four failed videos are probed again (a fixed file must get its chance), the four
    # good ones are kept as they were.
    assert "videos: 8 listed, 4 probed, 4 unchanged" in again.output
    second = _manifest(root)
    assert sorted(second) == sorted(first)
    for video_id, row in first.items():
        if row["status"] == "ok":
            assert second[video_id] == row
        else:
            drop = {"probe_seconds"}
            assert {k: v for k, v in second[video_id].items() if k not in drop} == {
                k: v for k, v in row.items() if k not in drop
            }

    write_video(videos / "new.mp4", seconds=4)
    (videos / "notes.mp4").unlink()
    write_video(videos / "notes.mp4", seconds=1)  # a failed file, fixed
    shutil.copy(videos / "rotated.mp4", videos / "good.mp4")  # a changed file
    (videos / "podcast.mp4").unlink()
    third = _ingest(root, videos, annotations)
    assert third.exit_code == 0, third.output
    assert "videos: 8 listed, 5 probed, 3 unchanged since the last run, 1 gone" in third.output
    rows = _manifest(root)
    assert "podcast" not in rows
    assert rows["new"]["status"] == "ok" and rows["new"]["duration"] == pytest.approx(4.0)
    assert rows["notes"]["status"] == "ok"
    assert rows["good"]["fingerprint"] == first["rotated"]["fingerprint"]
    assert rows["good"]["rotation"] == 270


@pytest.mark.reliability
def test_duplicate_ids_name_both_files(ray_local, tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "clip.mp4")
    write_video(videos / "sub" / "clip.mkv")
    (tmp_path / "a.json").write_text(json.dumps({"database": {}}))
    result = _ingest(tmp_path / "root", videos, tmp_path / "a.json")
    assert result.exit_code == 1
    assert "duplicate video id 'clip'" in result.output
    assert (
        str(videos / "clip.mp4") in result.output and str(videos / "sub/clip.mkv") in result.output
    )
    assert not (tmp_path / "root").exists()
    record(
        "input",
        "duplicate ids (clip.mp4 and sub/clip.mkv)",
        "exit 1 before any work, the error names both files (an ambiguous listing is "
        "the user's to resolve)",
        "test_ingest",
    )


def test_malformed_annotations_stop_before_any_work(ray_local, tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "clip.mp4")
    (tmp_path / "a.json").write_text('{"database": {"clip": {"annotations": [{"segment": 3}]}}}')
    result = _ingest(tmp_path / "root", videos, tmp_path / "a.json")
    assert result.exit_code == 1
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith("error: a.json: database['clip'].annotations[0].segment: expected [start, end]")
    )
    assert not (tmp_path / "root").exists()


def test_no_videos_is_a_clear_error(ray_local, tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "a.json").write_text(json.dumps({"database": {}}))
    result = _ingest(tmp_path / "root", tmp_path / "videos", tmp_path / "a.json")
    assert result.exit_code == 1 and "error: no videos at" in result.output


def test_thumos_annotations_and_glob_listing(ray_local, tmp_path):
    videos = tmp_path / "videos"
    write_video(videos / "video_validation_0000001.mp4", seconds=3)
    write_video(videos / "video_test_0000002.mp4", seconds=3)
    write_video(videos / "other.mkv")
    notes = tmp_path / "annotations"
    notes.mkdir()
    (notes / "Jump_val.txt").write_text("video_validation_0000001 0.5 1.5\n")
    (notes / "Jump_test.txt").write_text("video_test_0000002 1.0 2.0\n")
    (notes / "Ambiguous_val.txt").write_text("video_validation_0000001 2.0 2.5\n")
    root = tmp_path / "root"
    result = _ingest(root, f"{videos}/*.mp4", notes)
    assert result.exit_code == 0, result.output
    rows = _manifest(root)
    assert sorted(rows) == ["video_test_0000002", "video_validation_0000001"]
    assert rows["video_test_0000002"]["subset"] == "test"
    segments = pq.read_table(root / "annotations.parquet").to_pylist()
    assert [(s["video_id"], s["label"], s["source_format"]) for s in segments] == [
        ("video_test_0000002", "Jump", "thumos14"),
        ("video_validation_0000001", "Jump", "thumos14"),
    ]


@pytest.mark.s3
def test_ingest_to_and_from_s3(ray_local, tmp_path, s3_bucket):
    bucket, options = s3_bucket
    videos, annotations = _dataset(tmp_path / "data")
    source = Store(f"s3://{bucket}/raw", options)
    for path in sorted(videos.iterdir()):
        source.write_bytes(f"videos/{path.name}", path.read_bytes())
    source.write_bytes("annotations.json", annotations.read_bytes())
    pairs = [f"--storage-option={k}={v}" for k, v in options.items()]
    result = _ingest(
        f"s3://{bucket}/root",
        f"s3://{bucket}/raw/videos",
        f"s3://{bucket}/raw/annotations.json",
        *pairs,
    )
    assert result.exit_code == 0, result.output
    assert options["secret"] not in result.output
    root = Store(f"s3://{bucket}/root", options)
    rows = {r["video_id"]: r for r in root.read_table("manifest/videos.parquet").to_pylist()}
    assert (
        rows["good"]["status"] == "ok"
        and rows["good"]["uri"] == f"s3://{bucket}/raw/videos/good.mp4"
    )
    assert rows["rotated"]["rotation"] == 270
    assert rows["empty"]["error"].startswith("empty_file")
    assert rows["truncated"]["error"].startswith("not_a_video")
    local_root = tmp_path / "local-root"
    assert _ingest(local_root, videos, annotations).exit_code == 0
    local = _manifest(local_root)
    for video_id, row in rows.items():
        assert row["fingerprint"] == local[video_id]["fingerprint"]
        assert row["status"] == local[video_id]["status"]
    assert len(root.read_table("annotations.parquet")) == 4
    resolved = root.read_text("manifest/ingest.yaml")
    assert options["secret"] not in resolved and options["key"] not in resolved
    again = _ingest(
        f"s3://{bucket}/root",
        f"s3://{bucket}/raw/videos",
        f"s3://{bucket}/raw/annotations.json",
        *pairs,
    )
    assert "4 probed, 4 unchanged" in again.output


@pytest.mark.reliability
def test_unlabelled_camera_and_broadcast_files(ray_local, tmp_path):
    """A folder as cameras and broadcasters leave it, with no annotations: every file is in
    the manifest or in errors.parquet, and the videos go through materialize and extract."""
    folder = tmp_path / "camera"
    write_video(folder / "broadcast.ts", seconds=2, container_format="mpegts")
    write_video(folder / "avchd.MTS", seconds=2, container_format="mpegts")
    write_video(folder / "phone.3gp", seconds=2, container_format="3gp")
    write_audio_only(folder / "voice.m4a")
    (folder / "notes.txt").write_text("shot list\n")
    root = tmp_path / "root"
    output = run("ingest", root, "--videos", folder)
    rows = _manifest(root)
    assert {vid: (row["status"], row["subset"]) for vid, row in rows.items()} == {
        "broadcast": ("ok", "unlabelled"),
        "avchd": ("ok", "unlabelled"),
        "phone": ("ok", "unlabelled"),
    }
    errors = pq.read_table(root / "manifest/errors.parquet").to_pylist()
    assert sorted((r["uri"].rsplit("/", 1)[-1], r["reason"]) for r in errors) == [
        ("notes.txt", "skipped_extension"),
        ("voice.m4a", "skipped_extension"),
    ]
    assert "videos: 3 listed, 3 probed" in output
    assert "other files: 2 skipped, not a video extension (.m4a 1, .txt 1;" in output
    assert "annotations: none given; 3 videos without any (subset 'unlabelled')" in output
    assert pq.read_table(root / "annotations.parquet").num_rows == 0

    run("materialize", root, "--schedule", "demo")
    export = tmp_path / "npy"
    output = run("extract", root, "--encoder", "tiny", "--schedule", "demo", "--export", export)
    assert "3 videos, 0 failed" in output
    assert sorted(p.name for p in export.glob("*.npy")) == [
        "avchd.npy",
        "broadcast.npy",
        "phone.npy",
    ]
    status = run("status", root)
    assert "subsets of the ok videos: unlabelled 3" in status
    assert "other files skipped (not a video extension): 2" in status
    record(
        "input",
        "an unlabelled camera folder: .ts, .MTS, .3gp, an audio-only .m4a and a .txt",
        "the 3 videos ingested (subset unlabelled), materialized and extracted; the .m4a "
        "and .txt counted and in errors.parquet as skipped_extension",
        "test_ingest",
    )
