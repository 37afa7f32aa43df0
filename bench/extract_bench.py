"""Extraction benchmark: `lofipipe extract` against its limit, side by side in one run.

    .venv/bin/python bench/extract_bench.py [--encoder tsm_r18] [--videos 8]

The limit is what extraction cannot avoid on this machine: reading the snippets from the
shards plus a bare forward pass of the encoder over the same snippets held in memory (the
same torch threads, the same batch size). Target: the pipeline adds at most 15%.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from lofipipe.cli import main as cli  # noqa: E402
from lofipipe.models.registry import build_encoder  # noqa: E402
from lofipipe.pipeline.extract import run_extract  # noqa: E402
from lofipipe.pipeline.snippet_reader import SnippetReader  # noqa: E402
from lofipipe.schemas.config import load_config  # noqa: E402
from lofipipe.storage import Store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="tsm_r18")
    parser.add_argument("--videos", type=int, default=24)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        for command in (["synth", base / "data", "--videos", args.videos],
                        ["ingest", base / "root", "--videos", base / "data/videos",
                         "--annotations", base / "data/annotations.json"],
                        ["materialize", base / "root", "--schedule", "demo", "--set",
                         "materialize.videos_per_shard=2"]):
            cli([str(word) for word in command], standalone_mode=False)
        root = Store(str(base / "root"))
        config = load_config(None, [f"extract.encoder={args.encoder}",
                                    "materialize.schedule=demo"])

        reader = SnippetReader(root, "full")
        started = time.perf_counter()
        videos = list(reader.videos())
        reading = time.perf_counter() - started
        snippets = sum(len(v.frames) for v in videos)
        torch.manual_seed(0)
        encoder = build_encoder(args.encoder).eval()
        batch = config.extract.batch_size
        started = time.perf_counter()
        with torch.no_grad():
            for video in videos:
                for first in range(0, len(video.frames), batch):
                    encoder(video.frames[first: first + batch])
        forward = time.perf_counter() - started
        limit = reading + forward

        started = time.perf_counter()
        run_extract(config, root, {}, "bench")
        pipeline = time.perf_counter() - started
    ray.shutdown()
    print(f"\nextract {args.encoder}: {len(videos)} videos, {snippets} snippets "
          f"(demo full fidelity, 8 frames at 64 px), torch threads {torch.get_num_threads()}")
    print(f"   read {reading:6.2f} s + bare forward {forward:6.2f} s = limit {limit:6.2f} s "
          f"({snippets / limit:7.1f} snippets/s)")
    print(f"   lofipipe extract {pipeline:6.2f} s ({snippets / pipeline:7.1f} snippets/s) -> "
          f"{pipeline / limit - 1:+.0%} over the limit (target <= +15%)")


if __name__ == "__main__":
    main()
