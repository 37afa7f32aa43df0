"""Materialize on a real local Ray: shards per fidelity, commit markers, resume, failures,
reading back, and S3 on moto's server."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import fastparquet
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from support.cli import SHARDS, run, synth_and_ingest

from lofipipe.cli import main
from lofipipe.data.snippets import SnippetReader
from lofipipe.media.decode import SnippetDecoder
from lofipipe.schemas.schedule import PRESETS
from lofipipe.schemas.tables import SNIPPETS
from lofipipe.storage import Store

pytestmark = pytest.mark.ray

DEMO = PRESETS["demo"]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, ray_local):
    """A small synthetic dataset, ingested; each test copies the root it needs."""
    base = tmp_path_factory.mktemp("materialize")
    synth_and_ingest(base, 5)
    return base


def _fresh_root(ingested, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ingested / "root", root)
    return root


def _shard_files(root):
    return sorted(str(p.relative_to(root)) for p in (root / "shards").rglob("part-*"))


def test_every_fidelity_written_and_read_back(ingested, tmp_path):
    root = _fresh_root(ingested, tmp_path)
    output = run("materialize", root, "--schedule", "demo", "--encoding", "raw", *SHARDS)
    assert (
        "full: 3 shards (3 written, 0 already done), 5 videos ok, 0 failed, 160 snippets" in output
    )
    assert "t-lofi: 3 shards" in output and "40 snippets" in output
    expected = [
        f"shards/{f.name}/part-0000{i}.{kind}"
        for f in DEMO.fidelities
        for i in range(3)
        for kind in ("parquet", "stats.json")
    ]
    assert _shard_files(root) == sorted(expected)

    stats = json.loads((root / "shards/full/part-00000.stats.json").read_text())
    assert stats["videos"] == ["synth_0000", "synth_0001"] and stats["rows"] == 64
    assert stats["failures"] == {} and stats["lineage"]["encoding"] == "raw"
    table = pq.read_table(root / "shards/full/part-00000.parquet")
    SNIPPETS.check(table, "shard")
    assert table.column("video_id").to_pylist() == ["synth_0000"] * 32 + ["synth_0001"] * 32

    manifest = {
        r["video_id"]: r for r in pq.read_table(root / "manifest/videos.parquet").to_pylist()
    }
    reader = SnippetReader(Store(str(root)), "st-lofi")
    videos = list(reader.videos())
    assert [v.video_id for v in videos] == [f"synth_{i:04d}" for i in range(5)]
    annotations = pq.read_table(root / "annotations.parquet").to_pylist()
    fidelity = DEMO.fidelity("st-lofi")
    for video in videos:
        assert video.frames.shape == (16, 8, 3, 45, 45) and str(video.frames.dtype) == "torch.uint8"
        row = manifest[video.video_id]
        direct = [
            s
            for s in SnippetDecoder(DEMO).snippets(
                row["uri"], row["start_time"], row["duration"], (fidelity,)
            )
        ]
        assert np.allclose(video.start, [s.start for s in direct])
        assert np.allclose(video.frame_times, [s.frame_times for s in direct])
        assert np.array_equal(
            video.frames.permute(0, 1, 3, 4, 2).numpy(), np.stack([s.frames for s in direct])
        )
        mine = sorted(
            (a["start"], a["end"], a["label_id"])
            for a in annotations
            if a["video_id"] == video.video_id
        )
        assert (
            sorted(zip(video.segments[:, 0], video.segments[:, 1], video.labels, strict=True))
            == mine
        )

    rows = reader.dataset().take_all()
    assert sorted(r["video_id"] for r in rows) == [v.video_id for v in videos]
    by_id = {r["video_id"]: r for r in rows}
    for video in videos:
        assert np.array_equal(by_id[video.video_id]["frames"], video.frames.numpy())

    windows = list(reader.windows(6, video_ids={"synth_0000"}))
    assert [(w.first_index, len(w.start)) for w in windows] == [(0, 6), (6, 6), (12, 4)]
    assert np.array_equal(windows[1].frames, videos[0].frames[6:12])
    rows = reader.dataset(video_ids={"synth_0000"}, window=6).take_all()
    assert sorted((r["first_index"], r["frames"].shape) for r in rows) == [
        (0, (6, 8, 3, 45, 45)),
        (6, (6, 8, 3, 45, 45)),
        (12, (4, 8, 3, 45, 45)),
    ]


# The stated error of each lossy encoding against raw on the synthetic videos, whose noise
# texture shrunk to 32 pixels is the worst case for both codecs (measured with the default
# settings, per video: h264 3.9 to 4.6 levels of mean absolute error and at least 31.1 dB
# PSNR at 64 pixels, 7.6 to 8.9 and 26.4 at 32; jpeg 3.8 to 4.1 and 32.7, 6.4 to 7.1 and
# 28.4; on real footage see docs/materialize.md), and the most each fidelity's shards may
# take as a fraction of raw's (measured: h264 0.03 to 0.07, jpeg 0.16 to 0.36).
_LOSSY = {"jpeg": (9.0, 25.0, 0.4), "h264": (10.0, 25.0, 0.08)}


@pytest.mark.parametrize("encoding", sorted(_LOSSY))
def test_lossy_encodings_round_trip_within_their_stated_error(ingested, tmp_path, encoding):
    root = _fresh_root(ingested, tmp_path)
    run("materialize", root, "--schedule", "demo", "--encoding", encoding, *SHARDS)
    raw_root = _fresh_root(ingested, tmp_path / "raw")
    run("materialize", raw_root, "--schedule", "demo", "--encoding", "raw", *SHARDS)
    mean_error, psnr, fraction = _LOSSY[encoding]
    for fidelity in DEMO.fidelities:  # 64 and 32 pixels, and the odd 45 of st-lofi
        lossy = list(SnippetReader(Store(str(root)), fidelity.name).videos())
        raw = list(SnippetReader(Store(str(raw_root)), fidelity.name).videos())
        assert [v.video_id for v in lossy] == [v.video_id for v in raw]
        for a, b in zip(lossy, raw, strict=True):
            assert a.frames.shape == b.frames.shape and a.frames.dtype == torch.uint8
            assert np.array_equal(a.frame_times, b.frame_times)
            difference = a.frames.float() - b.frames.float()
            assert 0 < difference.abs().mean() < mean_error, (fidelity.name, a.video_id)
            assert 10 * np.log10(255**2 / difference.square().mean()) > psnr
        lossy_bytes = sum(
            s["bytes"] for s in SnippetReader(Store(str(root)), fidelity.name).stats()
        )
        raw_bytes = sum(
            s["bytes"] for s in SnippetReader(Store(str(raw_root)), fidelity.name).stats()
        )
        assert lossy_bytes < raw_bytes * fraction
    shard = root / "shards/full/part-00000.parquet"  # other readers see the same bytes
    written = pq.read_table(shard).column("frames").to_pylist()
    assert [list(f) for f in fastparquet.ParquetFile(str(shard)).to_pandas()["frames"]] == written


def test_rerun_skips_committed_and_redoes_the_rest(ingested, tmp_path):
    root = _fresh_root(ingested, tmp_path)
    run("materialize", root, "--schedule", "demo", *SHARDS)
    stamps = {p: os.stat(root / p).st_mtime_ns for p in _shard_files(root)}

    again = run("materialize", root, "--schedule", "demo", *SHARDS)
    assert "full: 3 shards (0 written, 3 already done)" in again
    assert {p: os.stat(root / p).st_mtime_ns for p in _shard_files(root)} == stamps

    (root / "shards/t-lofi/part-00001.stats.json").unlink()  # as if killed before commit
    third = run("materialize", root, "--schedule", "demo", *SHARDS)
    assert "t-lofi: 3 shards (1 written, 2 already done)" in third
    assert "full: 3 shards (0 written, 3 already done)" in third
    changed = [p for p in _shard_files(root) if os.stat(root / p).st_mtime_ns != stamps[p]]
    assert changed == ["shards/t-lofi/part-00001.parquet", "shards/t-lofi/part-00001.stats.json"]

    forced = run("materialize", root, "--schedule", "demo", "--force", *SHARDS)
    assert "full: 3 shards (3 written, 0 already done)" in forced


def test_failed_video_is_recorded_and_neighbours_are_intact(ingested, tmp_path):
    clean = _fresh_root(ingested, tmp_path / "clean")
    run("materialize", clean, "--schedule", "demo", *SHARDS)

    data = tmp_path / "data"
    shutil.copytree(ingested / "data", data)
    root = tmp_path / "root"
    run("ingest", root, "--videos", data / "videos", "--annotations", data / "annotations.json")
    broken = data / "videos/synth_0002.mp4"
    good_bytes = broken.read_bytes()
    broken.write_bytes(b"\x00" * 1000)  # damaged after ingest probed it
    output = run("materialize", root, "--schedule", "demo", *SHARDS)
    assert (
        "full: 3 shards (3 written, 0 already done), 4 videos ok, 1 failed (decode_error 1)"
        in output
    )
    stats = json.loads((root / "shards/full/part-00001.stats.json").read_text())
    assert stats["videos"] == ["synth_0003"]
    assert list(stats["failed"]) == ["synth_0002"]
    assert stats["failed"]["synth_0002"].startswith("decode_error: ")
    for fidelity in DEMO.fidelities:
        mine = {v.video_id: v for v in SnippetReader(Store(str(root)), fidelity.name).videos()}
        theirs = {v.video_id: v for v in SnippetReader(Store(str(clean)), fidelity.name).videos()}
        assert sorted(mine) == ["synth_0000", "synth_0001", "synth_0003", "synth_0004"]
        for video_id, video in mine.items():
            assert np.array_equal(video.frames, theirs[video_id].frames)
            assert np.array_equal(video.frame_times, theirs[video_id].frame_times)

    broken.write_bytes(good_bytes)
    skipped = run("materialize", root, "--schedule", "demo", *SHARDS)
    assert "1 failed" in skipped  # failures are not retried silently...
    retried = run("materialize", root, "--schedule", "demo", "--retry-failed", *SHARDS)
    assert "full: 3 shards (1 written, 2 already done), 5 videos ok, 0 failed" in retried


def test_a_killed_writer_leaves_no_visible_shard(ingested, tmp_path):
    root = _fresh_root(ingested, tmp_path)
    script = (
        "import sys, time\n"
        "import lofipipe.workers.shard_writer as shards\n"
        "from lofipipe.data.manifest import ok_videos\n"
        "from lofipipe.schemas.schedule import PRESETS\n"
        "from lofipipe.storage import Store\n"
        "encode = shards.FrameCodec.column\n"
        "def slow(*args):\n"
        "    time.sleep(0.5)\n"
        "    return encode(*args)\n"
        "shards.FrameCodec.column = slow\n"
        "root = Store(sys.argv[1])\n"
        "videos = tuple(ok_videos(root))\n"
        "stage = shards.ShardWriter(PRESETS['demo'], root)\n"
        "print('started', flush=True)\n"
        "stage.process(shards.ShardJob(0, videos, ('full', 't-lofi')))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 60
    while not list((root / "shards/full").glob(".part-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list((root / "shards/full").glob(".part-00000.parquet.*.partial"))  # was writing
    assert _shard_files(root) == []
    with pytest.raises(Exception, match="no committed shards"):
        SnippetReader(Store(str(root)), "full").shards()
    output = run("materialize", root, "--schedule", "demo", *SHARDS)
    assert "full: 3 shards (3 written, 0 already done)" in output
    assert not list((root / "shards").rglob(".part-*"))  # the leftovers were cleared


def test_exception_mid_shard_commits_nothing(ingested, tmp_path, monkeypatch):
    import lofipipe.workers.shard_writer as shards
    from lofipipe.data.manifest import ok_videos

    root = Store(str(_fresh_root(ingested, tmp_path)))
    calls = []

    encode = shards.FrameCodec.column

    def failing(*args):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("disk full")
        return encode(*args)

    monkeypatch.setattr(shards.FrameCodec, "column", failing)
    stage = shards.ShardWriter(DEMO, root)
    with pytest.raises(RuntimeError, match="disk full"):
        stage.process(shards.ShardJob(0, tuple(ok_videos(root)), ("full", "s-lofi")))
    assert root.list("shards/full") == [] and root.list("shards/s-lofi") == []


def test_stride_schedule_and_too_short_video(ingested, tmp_path):
    root = _fresh_root(ingested, tmp_path)
    schedule = tmp_path / "stride.yaml"
    schedule.write_text(
        "# lofipipe materialize ROOT --schedule stride.yaml\n"
        "sampling: stride\nfps: 10\nstride: 5\n"
        "full: {name: full, snippets: 4, frames: 4, size: 32}\n"
        "train:\n  - {name: half, snippets: 2, frames: 4, size: 32}\n"
    )
    output = run("materialize", root, "--schedule", schedule, *SHARDS)
    assert (
        "full: 3 shards (3 written, 0 already done), 5 videos ok, 0 failed, 100 snippets" in output
    )  # 100 frames at 10 fps: (100 - 4) // 5 + 1 snippets per video
    assert "half: 3 shards" in output and "50 snippets" in output
    saved = json.loads((root / "shards/schedule.json").read_text())
    assert saved["name"] == "stride" and saved["stride"] == 5


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "sampling: stride\nfull: {name: full, snippets: 4}\ntrain: [{name: a, snippets: 2}]\n",
            "fps: stride sampling needs a target frame rate",
        ),
        (
            "full: {name: full, snippets: 0}\ntrain: [{name: a, snippets: 2}]\n",
            "full.snippets: must be at least 1",
        ),
        ("full: {name: full, snippets: 4}\ntrain: []\n", "train: needs at least one fidelity"),
        (
            "full: {name: full, snippets: 4}\ntrain: [{name: full, snippets: 2}]\n",
            "fidelity names repeat",
        ),
        (
            "full: {name: full, snippets: 4, sise: 3}\ntrain: [{name: a, snippets: 2}]\n",
            "full.sise: unknown key",
        ),
    ],
)
def test_impossible_schedules_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["materialize", str(tmp_path), "--schedule", str(path)])
    assert result.exit_code == 2
    assert message in result.output


def test_inspect_writes_a_contact_sheet(ingested, tmp_path):
    root = _fresh_root(ingested, tmp_path)
    run("materialize", root, "--schedule", "demo", *SHARDS)
    output = run(
        "inspect",
        root,
        "--fidelity",
        "t-lofi",
        "--video",
        "synth_0001",
        "--out",
        tmp_path / "sheet.png",
        "--rows",
        "4",
    )
    assert "video synth_0001, 8 snippets of 8 frames at 64 px" in output
    from PIL import Image

    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (8 * 64, 4 * (64 + 14))
    missing = CliRunner().invoke(
        main,
        [
            "inspect",
            str(root),
            "--fidelity",
            "t-lofi",
            "--video",
            "nope",
            "--out",
            str(tmp_path / "x.png"),
        ],
    )
    assert missing.exit_code == 1 and "no snippets of video 'nope'" in missing.output


@pytest.mark.s3
def test_materialize_on_s3(ingested, tmp_path, s3_bucket):
    bucket, options = s3_bucket
    raw = Store(f"s3://{bucket}/raw", options)
    for path in sorted((ingested / "data/videos").iterdir()):
        raw.write_bytes(f"videos/{path.name}", path.read_bytes())
    raw.write_bytes("annotations.json", (ingested / "data/annotations.json").read_bytes())
    pairs = [f"--storage-option={k}={v}" for k, v in options.items()]
    root_url = f"s3://{bucket}/root"
    run(
        "ingest",
        root_url,
        "--videos",
        f"s3://{bucket}/raw/videos",
        "--annotations",
        f"s3://{bucket}/raw/annotations.json",
        *pairs,
    )
    output = run("materialize", root_url, "--schedule", "demo", *SHARDS, *pairs)
    assert "full: 3 shards (3 written, 0 already done), 5 videos ok" in output
    root = Store(root_url, options)
    assert root.list("shards/full") == [
        f"shards/full/part-0000{i}.{kind}" for i in range(3) for kind in ("parquet", "stats.json")
    ]
    local = _fresh_root(ingested, tmp_path)
    run("materialize", local, "--schedule", "demo", *SHARDS)
    remote_videos = list(SnippetReader(root, "s-lofi").videos())
    local_videos = list(SnippetReader(Store(str(local)), "s-lofi").videos())
    assert [v.video_id for v in remote_videos] == [v.video_id for v in local_videos]
    for remote, here in zip(remote_videos, local_videos, strict=True):
        assert np.array_equal(remote.frames, here.frames)
    again = run("materialize", root_url, "--schedule", "demo", *SHARDS, *pairs)
    assert "full: 3 shards (0 written, 3 already done)" in again


def test_spilled_videos_write_the_same_rows(ingested, tmp_path, monkeypatch):
    """Long videos' rows go to local disk before their shard; the shard is the same."""
    import lofipipe.workers.shard_writer as shards
    from lofipipe.data.manifest import ok_videos

    roots = {}
    for name, spill in (("memory", 2**40), ("disk", 1)):
        monkeypatch.setattr(shards, "_SPILL_BYTES", spill)
        root = Store(str(_fresh_root(ingested, tmp_path / name)))
        shards.ShardWriter(DEMO, root).process(
            shards.ShardJob(0, tuple(ok_videos(root)), ("full", "t-lofi"))
        )
        roots[name] = root
    for fidelity in ("full", "t-lofi"):
        tables = [r.read_table(f"shards/{fidelity}/part-00000.parquet") for r in roots.values()]
        assert tables[0].num_rows > 0 and tables[0].equals(tables[1])


def test_streamed_reads_hold_a_bounded_number_of_videos(ingested, tmp_path):
    """One shard of 5 videos read with `stream(prefetch=1)`: the decoded frames held at
    once never pass 3 videos' worth (the caller's, the one waiting, the one being made),
    where a list of the shard's videos holds all 5."""
    import tracemalloc

    root = _fresh_root(ingested, tmp_path)
    run("materialize", root, "--schedule", "demo", "--set", "materialize.videos_per_shard=8")
    reader = SnippetReader(Store(str(root)), "full")
    assert len(reader.shards()) == 1
    one = next(reader.videos()).frames.nbytes

    def peak(read) -> int:
        tracemalloc.start()
        try:
            read()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def consume():
        for video in reader.stream(prefetch=1):
            assert video.frames.nbytes == one

    assert peak(consume) < 3.5 * one
    assert peak(lambda: list(reader.videos())) > 4.5 * one  # the bound can fail


def test_raw_shards_of_earlier_releases_are_read_and_kept(ingested, tmp_path):
    """A raw shard as lofipipe 0.1 wrote it (planar RGB bytes, a lineage without codec
    settings), built here with pyarrow alone: read back exactly, accepted for training,
    kept by `materialize --encoding raw`, and redone by the h264 default."""
    import pyarrow as pa

    from lofipipe.data.manifest import ok_videos
    from lofipipe.schemas.preprocess import PREPROCESS_PRESETS

    root = _fresh_root(ingested, tmp_path)
    store = Store(str(root))
    videos = ok_videos(store)
    squash = PREPROCESS_PRESETS["squash"]
    for fidelity in DEMO.fidelities:
        rows, frames = [], []
        for video in videos:
            for snippet in SnippetDecoder(DEMO).snippets(
                video.uri, video.start_time, video.duration, (fidelity,)
            ):
                rows.append(
                    {
                        "video_id": video.video_id,
                        "fidelity": fidelity.name,
                        "index": snippet.index,
                        "start": snippet.start,
                        "end": snippet.end,
                        "center": snippet.center,
                        "frame_times": snippet.frame_times,
                        "num_frames": fidelity.frames,
                        "height": fidelity.size,
                        "width": fidelity.size,
                        "encoding": "raw",
                        "frames": [f.transpose(2, 0, 1).tobytes() for f in snippet.frames],
                        "source_fingerprint": video.fingerprint,
                    }
                )
                frames.append(snippet.frames)
        folder = root / "shards" / fidelity.name
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, SNIPPETS.arrow), folder / "part-00000.parquet")
        lineage = {
            "schedule": "demo",
            "sampling": DEMO.sampling,
            "fps": DEMO.fps,
            "stride": DEMO.stride,
            "encoding": "raw",
            **fidelity.content,
            "preprocess": squash.spatial_content,
            "schedule_spec": DEMO.record(),
        }
        stats = {
            "fidelity": fidelity.name,
            "shard": 0,
            "rows": len(rows),
            "videos": [v.video_id for v in videos],
            "failed": {},
            "failures": {},
            "source_fingerprints": {v.video_id: v.fingerprint for v in videos},
            "lineage": lineage,
            "lofipipe_version": "0.1.0",
            "node": "old",
            "bytes": (folder / "part-00000.parquet").stat().st_size,
        }
        (folder / "part-00000.stats.json").write_text(json.dumps(stats))
        read = list(SnippetReader(store, fidelity.name, threads=2).videos())
        assert [v.video_id for v in read] == [v.video_id for v in videos]
        assert np.array_equal(
            torch.cat([v.frames for v in read]).permute(0, 1, 3, 4, 2).numpy(), np.stack(frames)
        )
        SnippetReader(store, fidelity.name).check_schedule(DEMO, squash)
    settings = ["--set", "materialize.videos_per_shard=8", "--set", "materialize.preprocess=squash"]
    kept = run("materialize", root, "--schedule", "demo", "--encoding", "raw", *settings)
    assert "full: 1 shards (0 written, 1 already done)" in kept
    redone = run("materialize", root, "--schedule", "demo", *settings)
    assert "full: 1 shards (1 written, 0 already done)" in redone
    stats = json.loads((root / "shards/full/part-00000.stats.json").read_text())
    assert stats["lineage"]["encoding"] == "h264" and stats["lineage"]["codec"]["crf"] == 24
