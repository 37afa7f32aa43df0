"""The TAL head on one feature set, four training setups side by side in one run.

    .venv/bin/python bench/head_bench.py [--videos 120] [--seconds 48] [--workdir DIR] [--keep]

One feature set, as THUMOS-14 is set up for ActionFormer but small: synthetic videos of
48 s with 4 classes (a quarter of them validation), frames taken at 15 fps and a snippet
every 3 frames (238 snippets per video, windows of 128), `tiny` features with random
weights (the classes are motion patterns, which a random 3-D convolution already tells
apart; the table's mAP says whether it did). On it the head is trained four ways:
  (1) lofipipe's defaults (conv pyramid; ActionFormer's THUMOS-14 schedule, batch 2,
      lr 1e-4, 35 epochs of which 5 warm up, at least 3500 steps);
  (2) the defaults with ActionFormer's transformer pyramid;
  (3) the defaults with an EMA of the weights (decay 0.999, as ActionFormer evaluates);
  (4) the former defaults (batch 16, lr 1e-3, 30 epochs, no minimum of steps).
Each is scored on the validation videos at tIoU 0.3:0.7:0.1 (THUMOS-14's) and
0.5:0.95:0.05 (ActivityNet's). The official ActionFormer figures on THUMOS-14 are printed
beside them as quoted, not measured: they are another dataset and another encoder, a
reference for the scale of the numbers only.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from lofipipe.cli import main as cli  # noqa: E402
from lofipipe.data.annotations import AnnotationIndex  # noqa: E402
from lofipipe.data.features import list_features  # noqa: E402
from lofipipe.data.runs import read_metrics  # noqa: E402
from lofipipe.evaluation.detection import evaluate, parse_thresholds  # noqa: E402
from lofipipe.evaluation.files import parse_predictions  # noqa: E402
from lofipipe.evaluation.ground_truth import ground_truth  # noqa: E402
from lofipipe.storage import Store  # noqa: E402

# 48 s at 15 fps with a snippet every 3 frames: 238 snippets a video, so training crops a
# window of 128 and inference covers a video with overlapping windows, as on THUMOS-14.
# Head training uses only `full`; a schedule must name a reduced fidelity too.
SCHEDULE = """\
name: head-bench
sampling: stride
fps: 15
stride: 3
full: {name: full, snippets: 128, frames: 8, size: 64}
train:
  - {name: half, snippets: 64, frames: 8, size: 64}
"""

SETUPS = {
    "conv, defaults": [],
    "transformer, defaults": ["train.head.arch=transformer"],
    "conv, defaults + EMA 0.999": ["train.ema_decay=0.999"],
    "conv, the former defaults": [
        "train.batch_size=16",
        "train.lr=1e-3",
        "train.epochs=30",
        "train.min_steps=0",
    ],
}
THUMOS_TIOU = "0.3:0.7:0.1"
ANET_TIOU = "0.5:0.95:0.05"
# From the issue, not measured here: ActionFormer's own code and THUMOS-14 config (I3D
# features), evaluated with its EMA weights.
QUOTED = ("ActionFormer, official (quoted)", None, 96.2, None, 76.7, 1575, None)


def _cli(*words) -> None:
    cli([str(word) for word in words], standalone_mode=False)


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _scores(root: Store, run: str, subset: str, tiou: str) -> np.ndarray:
    """mAP at each threshold of `tiou` of the run's predictions on `subset`."""
    annotations = AnnotationIndex(root)
    path = f"runs/{run}/predictions.json"
    result = evaluate(
        ground_truth(annotations, annotations.videos(subset)),
        parse_predictions(root.read_text(path), path),
        parse_thresholds(tiou),
    )
    return 100 * result.mAP


def build_features(base: Path, videos: int, seconds: float) -> tuple[Store, str, float]:
    """Synthetic videos through ingest, materialize and extract; the root, the feature
    fingerprint and the seconds it took."""
    schedule = base / "head-bench.yaml"
    schedule.write_text(SCHEDULE)
    root = Store(str(base / "root"))

    def stages():
        _cli("synth", base / "data", "--videos", videos, "--seconds", seconds, "--classes", 4)
        _cli(
            "ingest",
            root.url,
            "--videos",
            base / "data/videos",
            "--annotations",
            base / "data/annotations.json",
        )
        _cli("materialize", root.url, "--schedule", schedule)
        _cli("extract", root.url, "--encoder", "tiny", "--schedule", schedule)

    took = _timed(stages)
    (features,) = [item["fingerprint"] for item in list_features(root)]
    return root, features, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=120)
    parser.add_argument("--seconds", type=float, default=48.0)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.getLogger("ray").setLevel(logging.ERROR)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="head-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        root, features, preparing = build_features(base, args.videos, args.seconds)
        annotations = AnnotationIndex(root)
        split = [len(annotations.videos(s)) for s in ("training", "validation")]
        for index, (label, overrides) in enumerate(SETUPS.items()):
            run = f"head-{index + 1}"
            sets = [word for item in overrides for word in ("--set", item)]
            train = ["train", root.url, "--mode", "head", "--features", features, "--run", run]
            took = _timed(partial(_cli, *train, *sets))
            thumos = _scores(root, run, "validation", THUMOS_TIOU)
            anet = _scores(root, run, "validation", ANET_TIOU)
            steps = read_metrics(root, run, kinds=("epoch",))[-1]["step"]
            rows.append(
                (f"({index + 1}) {label}", thumos, thumos.mean(), anet, anet.mean(), steps, took)
            )
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"\nThe TAL head on one feature set: {args.videos} synthetic videos of "
        f"{args.seconds:g} s, 4 classes, {split[0]} training / {split[1]} validation; "
        f"tiny features (random weights), stride sampling 15 fps, a snippet every 3 frames, "
        f"windows of 128; features built in {preparing / 60:.1f} min. Validation mAP (%)."
    )
    for tiou, column in ((THUMOS_TIOU, 1), (ANET_TIOU, 3)):
        thresholds = parse_thresholds(tiou)
        print(
            f"\n{'mAP at tIoU ' + tiou:<32}  "
            + "  ".join(f"{t:>5g}" for t in thresholds)
            + f"  {'avg':>5}  {'steps':>5}  {'wall':>7}"
        )
        for row in [*rows, QUOTED]:
            label, values, average, steps, took = row[0], row[column], row[column + 1], *row[5:]
            cells = [f"{v:5.1f}" for v in values] if values is not None else [""] * len(thresholds)
            line = (
                f"{label:<32}  "
                + "  ".join(f"{cell:>5}" for cell in cells)
                + f"  {average:5.1f}  {steps:>5}  "
                + (f"{took / 60:5.1f} m" if took is not None else "")
            )
            print(line.rstrip())
    if args.keep:
        print(f"workdir kept: {base}")


if __name__ == "__main__":
    main()
