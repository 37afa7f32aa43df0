"""`lofipipe detect` throughput on this machine, per encoder.

    .venv/bin/python bench/detect_bench.py [--videos 8] [--seconds 30] [--encoders tiny,tsm_r18]
        [--schedule demo]

For each encoder: a synthetic dataset is ingested and materialized with the schedule
(default the demo's: 32 snippets of 8 frames at 64 px a video; `lofi-anet`: 100 at 224)
with the encoder's preprocessing, its features extracted (random weights) and a head
trained on them for one epoch, which leaves a model bundle; then `lofipipe detect` runs
that bundle on the dataset's video files into an empty folder (probe, decode, encode,
head, soft-NMS, outputs), timed from start to end. Prints videos/s and video-seconds/s.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

from lofipipe.cli import main as cli
from lofipipe.layout import model_dir
from lofipipe.models.registry import encoder_preprocess

HEAD = ["--set", "train.epochs=1", "--set", "train.min_steps=0", "--set", "train.head.dim=64"]


def _cli(*words) -> str:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, [str(word) for word in words])
    if result.exit_code != 0:
        raise SystemExit(f"lofipipe {' '.join(map(str, words[:2]))} failed:\n{result.output}")
    return result.output


def bundle(base: Path, data: Path, encoder: str, schedule: str) -> Path:
    """A head run on `encoder`'s features of `data` at `schedule`; its bundle."""
    root = base / f"root-{encoder}"
    preset = encoder_preprocess(encoder).name
    _cli("ingest", root, "--videos", data / "videos", "--annotations", data / "annotations.json")
    _cli("materialize", root, "--schedule", schedule, "--set", f"materialize.preprocess={preset}")
    output = _cli("extract", root, "--encoder", encoder, "--schedule", schedule)
    fingerprint = re.search(r"^features (\w+): ", output, re.M).group(1)
    _cli("train", root, "--features", fingerprint, "--run", "head", *HEAD)
    return root / model_dir("head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--encoders", default="tiny,tsm_r18")
    parser.add_argument("--schedule", default="demo")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        data = base / "data"
        _cli("synth", data, "--videos", args.videos, "--seconds", args.seconds)
        for encoder in args.encoders.split(","):
            model = bundle(base, data, encoder, args.schedule)
            started = time.perf_counter()
            output = _cli("detect", data / "videos", "--model", model, "--out", base / encoder)
            wall = time.perf_counter() - started
            line = next(line for line in output.splitlines() if line.startswith("detect:"))
            rows.append((encoder, wall, line))
    seconds = args.videos * args.seconds
    print(
        f"\ndetect on {os.cpu_count()} CPUs: {args.videos} videos of {args.seconds:g} s, "
        f"{args.schedule} schedule"
    )
    print(f"{'encoder':<10} {'wall s':>7} {'videos/s':>9} {'video-s/s':>10}  summary")
    for encoder, wall, line in rows:
        print(f"{encoder:<10} {wall:7.1f} {args.videos / wall:9.3f} {seconds / wall:10.1f}  {line}")


if __name__ == "__main__":
    main()
