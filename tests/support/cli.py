"""Running the CLI in-process in tests, and the small synthetic dataset they share."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

from lofipipe.cli import main

SHARDS = ["--set", "materialize.videos_per_shard=2"]


def run(*args) -> str:
    """Runs `lofipipe ARGS` and returns its output; it must succeed."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def small_synth(videos: int) -> list[str]:
    """Overrides for a dataset of `videos` 10-second 64x48 videos at 10 fps."""
    return [
        "--set",
        f"synth.videos={videos}",
        "--set",
        "synth.seconds=10",
        "--set",
        "synth.width=64",
        "--set",
        "synth.height=48",
        "--set",
        "synth.fps=10",
        "--set",
        "synth.actions_per_video=[1, 2]",
        "--set",
        "synth.action_seconds=[1.5, 3]",
    ]


def synth_and_ingest(base: Path, videos: int) -> None:
    """`base/data`: a small synthetic dataset; `base/root`: it ingested."""
    run("synth", base / "data", *small_synth(videos))
    run(
        "ingest",
        base / "root",
        "--videos",
        base / "data/videos",
        "--annotations",
        base / "data/annotations.json",
    )


def fresh_root(base: Path, tmp_path: Path) -> Path:
    """A private copy of `base/root` under `tmp_path`."""
    shutil.copytree(base / "root", tmp_path / "root")
    return tmp_path / "root"
