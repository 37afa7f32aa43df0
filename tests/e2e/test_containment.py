"""A video that crashes or hangs the decoder, in a real driver process with its own Ray:
the shard task dies or times out, runs again, and the video is quarantined after
`materialize.max_attempts` deaths; its neighbours' snippets equal a clean run's."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from support.cli import fresh_root, run
from support.faults import kill_when, worker_pids
from support.job_outputs import differences, job_outputs, row_changes
from support.reliability import record

from lofipipe.data.snippets import SnippetReader
from lofipipe.storage import Store

pytestmark = [pytest.mark.slow, pytest.mark.ray]

INJECT = Path(__file__).parent.parent / "support" / "inject"


def _materialize(root: Path, faults: str, *sets: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": str(INJECT),
        "LOFIPIPE_TEST_DECODER_FAULTS": faults,
    }
    env.pop("RAY_ADDRESS", None)
    command = [
        str(Path(sys.executable).parent / "lofipipe"),
        "materialize",
        str(root),
        "--schedule",
        "demo",
        "--set",
        "ray.num_cpus=2",
        "--set",
        "materialize.videos_per_shard=2",
        *sets,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.reliability
def test_crashing_and_hanging_videos_are_quarantined(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    result = _materialize(
        root,
        "crash=synth_0001.mp4;hang=synth_0002.mp4",
        "--force",
        "--set",
        "materialize.video_timeout_s=5",
        "--set",
        "materialize.video_timeout_s_per_hour=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "full: 2 shards (2 written, 0 already done), 2 videos ok, 2 failed "
        "(quarantined 2)" in result.stdout
    )
    assert "shard 0: worker died" in result.stderr and "trying again" in result.stderr
    assert "shard 1: timed out after" in result.stderr

    for fidelity in ("full", "s-lofi"):
        stats = [
            json.loads((root / f"shards/{fidelity}/part-0000{i}.stats.json").read_text())
            for i in range(2)
        ]
        assert [s["videos"] for s in stats] == [["synth_0000"], ["synth_0003"]]
        crashed, hung = stats[0]["failed"]["synth_0001"], stats[1]["failed"]["synth_0002"]
        assert crashed.startswith(
            "quarantined: the decoder died or hung on it in 2 attempts (last: worker_died: "
        )
        # The shard's limit: 2 videos x 5 s.
        assert hung == (
            "quarantined: the decoder died or hung on it in 2 attempts (last: "
            "timeout: timed out after 10 s)"
        )
        clean = SnippetReader(Store(str(demo_shards / "root")), fidelity)
        for video in ("synth_0000", "synth_0003"):
            got = SnippetReader(Store(str(root)), fidelity).read_video(video)
            want = clean.read_video(video)
            assert np.array_equal(got.frames.numpy(), want.frames.numpy())
            assert np.array_equal(got.start, want.start)
    assert not list((root / "_lofipipe/journal").rglob("*.json"))  # committed: cleared
    record(
        "fault",
        "decoder crash (SIGSEGV in the worker) on one video",
        f"shard retried, video quarantined after 2 attempts: `{crashed[:60]}...`; its "
        f"shard neighbour identical to a clean run's",
        "test_containment",
    )
    record(
        "fault",
        "decoder hang on one video (5 s limit per video)",
        f"task killed at its time limit, retried, quarantined: `{hung}`",
        "test_containment",
    )

    # A rerun with --retry-failed gives them a fresh start; without faults they pass.
    again = _materialize(root, "", "--retry-failed")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "full: 2 shards (2 written, 0 already done), 4 videos ok, 0 failed" in again.stdout


def _killed_worker_run(command: list[str], title: bytes) -> tuple[subprocess.Popen, str, str]:
    """Runs `lofipipe COMMAND` with its own Ray and SIGKILLs the first Ray worker process
    whose title holds `title` (a task or actor at work); returns the finished process."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    earlier = worker_pids(title)
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "lofipipe"), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert (
            kill_when(
                process,
                lambda: bool(worker_pids(title) - earlier),
                kill=lambda: [os.kill(pid, signal.SIGKILL) for pid in worker_pids(title) - earlier],
            )
            is True
        )
    finally:  # a driver left running would hold its Ray for the tests after this one
        out, err = process.communicate(timeout=600)
    return process, out, err


@pytest.mark.reliability
def test_a_killed_worker_during_materialize_or_extract_loses_nothing(demo_shards, tmp_path):
    root = fresh_root(demo_shards, tmp_path)
    clean = job_outputs(Store(str(demo_shards / "root")))
    process, out, err = _killed_worker_run(
        [
            "materialize",
            str(root),
            "--schedule",
            "demo",
            "--force",
            "--set",
            "ray.num_cpus=2",
            "--set",
            "materialize.videos_per_shard=2",
        ],
        b"ray::lofipipe.materialize",
    )
    assert process.returncode == 0, err[-3000:]
    assert "worker died" in err and "trying again" in err
    assert "4 videos ok, 0 failed" in out
    shards = {k: v for k, v in job_outputs(Store(str(root))).items() if k.startswith("shards/")}
    want = {k: v for k, v in clean.items() if k.startswith("shards/")}
    assert differences(want, shards) == [] and row_changes(want, shards) == (0, 0)
    record(
        "fault",
        "Ray worker killed (SIGKILL) during materialize",
        "its shard ran again; shards equal a clean run's",
        "test_containment",
    )

    process, out, err = _killed_worker_run(
        [
            "extract",
            str(root),
            "--encoder",
            "tiny",
            "--schedule",
            "demo",
            "--set",
            "ray.num_cpus=2",
        ],
        b"ExtractActor",
    )
    assert process.returncode == 0, err[-3000:]
    reference = tmp_path / "reference"
    shutil.copytree(root, reference)
    shutil.rmtree(reference / "features")
    # The uninterrupted extraction of the same shards (in this process's Ray).
    run("extract", reference, "--encoder", "tiny", "--schedule", "demo")
    got = {k: v for k, v in job_outputs(Store(str(root))).items() if k.startswith("features/")}
    want = {
        k: v for k, v in job_outputs(Store(str(reference))).items() if k.startswith("features/")
    }
    assert want and differences(want, got) == [] and row_changes(want, got) == (0, 0)
    record(
        "fault",
        "Ray worker (encoder actor) killed (SIGKILL) during extract",
        "Ray restarted the actor and ran its part again; features equal a clean run's",
        "test_containment",
    )


@pytest.mark.reliability
def test_a_full_disk_stops_with_one_line_and_a_rerun_resumes(demo_shards, tmp_path):
    """ROOT on a tmpfs with room for about half of the shards: materialize stops with one
    `error:` line, leaves no partial file, and once the disk has room the rerun ends with
    the shards of a clean run."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    clean = demo_shards / "root"
    kept = [
        p
        for p in clean.rglob("*")
        if p.is_file() and "shards" not in p.parts and "_lofipipe" not in p.parts
    ]
    shards = sum(p.stat().st_size for p in (clean / "shards").rglob("*.parquet"))
    size = sum(p.stat().st_size for p in kept) + 4096 * (len(kept) + 40) + shards // 2
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    command = [
        str(Path(sys.executable).parent / "lofipipe"),
        "materialize",
        str(disk / "root"),
        "--schedule",
        "demo",
        "--set",
        "materialize.videos_per_shard=2",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    try:
        shutil.copytree(clean, disk / "root", ignore=shutil.ignore_patterns("shards", "_lofipipe"))
        full = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert full.returncode == 1, full.stderr[-3000:]
        errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].endswith("No space left on device"), errors
        assert not list((disk / "root").rglob("*.partial"))  # nothing half-written is left
        for parquet in (disk / "root").rglob("*.parquet"):
            pq.read_table(parquet)  # what is there under a final name is whole
        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        got = {
            k: v
            for k, v in job_outputs(Store(str(disk / "root"))).items()
            if k.startswith("shards/")
        }
        want = {k: v for k, v in job_outputs(Store(str(clean))).items() if k.startswith("shards/")}
        assert differences(want, got) == []
        lost, duplicated = row_changes(want, got)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    record(
        "fault",
        "local disk full during materialize (ROOT on a small tmpfs)",
        f"stopped with `{errors[0][:90]}...`, no partial file; the rerun with room wrote "
        f"the clean run's shards",
        "test_containment",
        lost,
        duplicated,
    )
