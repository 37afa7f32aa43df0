"""Extraction benchmark: `lofipipe extract` against its limit, side by side in one run.

    .venv/bin/python bench/extract_bench.py [--encoder tsm_r18] [--schedule lofi-anet]
        [--videos 4] [--quick]

The inputs are realistic: 1-minute 640x360 30 fps videos, materialized for the schedule
(lofi-anet: 100 snippets of 8 frames at 224 per video, as the LoFi paper's ActivityNet
setup). The limit is what extraction cannot avoid on this machine: reading the snippets
from the shards plus a bare forward pass of the encoder over the same snippets held in
memory (all CPU threads, the same batch size). Target: the pipeline adds at most 15%.
`--from videos` (decoding instead of reading shards) is timed beside it for reference.
`--quick` runs the demo schedule with `tiny` on small videos instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from videos import bench_videos  # noqa: E402

from lofipipe.cli import main as cli  # noqa: E402
from lofipipe.data.snippets import SnippetReader  # noqa: E402
from lofipipe.models.registry import build_encoder  # noqa: E402
from lofipipe.pipeline.extract import run_extract  # noqa: E402
from lofipipe.schemas.config import load_config  # noqa: E402
from lofipipe.schemas.schedule import load_schedule  # noqa: E402
from lofipipe.storage import Store  # noqa: E402


def _timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="tsm_r18")
    parser.add_argument("--schedule", default="lofi-anet")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.encoder, args.schedule = "tiny", "demo"
    import ray

    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    size = (160, 120) if args.quick else (640, 360)
    sources = bench_videos(f"extract-{size[0]}", args.videos, 60, *size, 30)
    overrides = [
        f"extract.encoder={args.encoder}",
        f"materialize.schedule={args.schedule}",
        "materialize.videos_per_shard=1",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        root = Store(str(Path(scratch) / "root"))
        annotations = Path(scratch) / "annotations.json"
        annotations.write_text(
            json.dumps(
                {
                    "database": {
                        path.stem: {
                            "subset": "training",
                            "duration": 60.0,
                            "annotations": [{"segment": [10.0, 20.0], "label": "action"}],
                        }
                        for path in sources
                    }
                }
            )
        )
        cli(
            [
                "ingest",
                root.url,
                "--videos",
                str(sources[0].parent),
                "--annotations",
                str(annotations),
            ],
            standalone_mode=False,
        )
        cli(["materialize", root.url, *(f"--set={o}" for o in overrides)], standalone_mode=False)
        config = load_config(None, overrides)
        full = load_schedule(args.schedule).full

        videos, reading = _timed(lambda: list(SnippetReader(root, full.name).videos()))
        snippets = sum(len(v.frames) for v in videos)
        torch.manual_seed(0)
        encoder = build_encoder(args.encoder).eval()
        batch = config.extract.batch_size

        def forward():
            with torch.no_grad():
                for video in videos:
                    for part in video.frames.split(batch):
                        encoder(part)

        _, bare = _timed(forward)
        limit = reading + bare
        videos.clear()  # the pipeline runs without them in memory
        _, pipeline = _timed(lambda: run_extract(config, root, {}, "bench"))
        config = load_config(None, [*overrides, "extract.source=videos"])
        for name in root.list("features", recursive=True):
            root.remove(name)
        _, decoding = _timed(lambda: run_extract(config, root, {}, "bench"))
    ray.shutdown()
    print(
        f"\nextract {args.encoder}: {len(sources)} videos, {snippets} snippets "
        f"({args.schedule} full fidelity, {full.frames} frames at {full.size} px from "
        f"{size[0]}x{size[1]}), torch threads {torch.get_num_threads()}"
    )
    print(
        f"   read {reading:7.2f} s + bare forward {bare:7.2f} s = limit {limit:7.2f} s "
        f"({snippets / limit:6.2f} snippets/s)"
    )
    print(
        f"   lofipipe extract          {pipeline:7.2f} s ({snippets / pipeline:6.2f} "
        f"snippets/s) -> {pipeline / limit - 1:+.1%} over the limit (target <= +15%)"
    )
    print(
        f"   lofipipe extract --from videos {decoding:7.2f} s ({snippets / decoding:6.2f} "
        f"snippets/s), {decoding / pipeline:.2f}x the time from shards"
    )


if __name__ == "__main__":
    main()
