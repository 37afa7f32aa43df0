"""Materialize benchmarks, each a ratio of two things measured side by side in one run.

    .venv/bin/python bench/materialize_bench.py            # the full run (~10 min)
    .venv/bin/python bench/materialize_bench.py --quick    # small inputs, a smoke run

1. Throughput against the physical limit: `lofipipe materialize` of every lofi-anet
   fidelity on a local Ray, against a bare PyAV decode-only loop over the same files with
   the same number of processes. Target: >= 0.8.
2. One decode pass for all fidelities against one pass per fidelity (the naive way), the
   same stage in one process. Target: >= 2x faster.
3. Reading full-fidelity snippets from shards against decoding them from the source video,
   per frame encoding, with the bytes each snippet takes. Target: >= 10x faster.
4. Peak memory (RSS) of materializing a 10-minute video against a 1-minute one of the same
   size, in fresh processes, for resize (lofi-anet) and stride (lofi-thumos) sampling.
   Target: <= 1.3x.
5. The cost of each preprocessing preset: decoding every lofi-anet fidelity with `squash`
   (bilinear, exact), `tsm-test` (short side and centre crop) and `squash-fast` (FFmpeg's
   FAST_BILINEAR) against decode-only of the same files, in one process. Tells whether the
   inexact `squash-fast` is worth keeping.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).parent))
from videos import bench_videos  # noqa: E402

from lofipipe.data.manifest import ok_videos  # noqa: E402
from lofipipe.data.snippets import SnippetReader  # noqa: E402
from lofipipe.media.decode import SnippetDecoder  # noqa: E402
from lofipipe.pipeline.ingest import run_ingest  # noqa: E402
from lofipipe.pipeline.materialize import run_materialize  # noqa: E402
from lofipipe.schemas.config import load_config  # noqa: E402
from lofipipe.schemas.preprocess import PREPROCESS_PRESETS  # noqa: E402
from lofipipe.schemas.schedule import PRESETS  # noqa: E402
from lofipipe.storage import Store  # noqa: E402
from lofipipe.workers.shard_writer import ShardJob, ShardWriter  # noqa: E402

WORKERS = 2
REPEATS = 3


def best_of(repeats: int, work) -> float:
    """The shortest of `repeats` timed runs of `work()`: the least disturbed by the noise of
    a shared machine, taken alike for both sides of a ratio."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def decode_only(path: str) -> float:
    """Decodes every frame of a video and does nothing else; returns its duration."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass
        return float(stream.duration * stream.time_base)


def ingest(paths: list[Path], root: Path) -> Store:
    root.parent.mkdir(parents=True, exist_ok=True)
    annotations = root.parent / "annotations.json"
    annotations.write_text(json.dumps({"database": {}}))
    config = load_config()
    run_ingest(config, Store(str(root)), str(paths[0].parent), str(annotations), {}, "bench")
    return Store(str(root))


def throughput(paths: list[Path], work: Path, label: str) -> None:
    with multiprocessing.Pool(WORKERS) as pool:
        pool.map(decode_only, [str(p) for p in paths])  # warm-up pass, untimed
        started = time.perf_counter()
        seconds = sum(pool.map(decode_only, [str(p) for p in paths]))
        limit = time.perf_counter() - started
    print(
        f"\n1. throughput, {len(paths)} videos of {label}, {seconds:.0f} s of video, "
        f"{WORKERS} processes"
    )
    print(f"   decode-only limit: {limit:6.2f} s  {seconds / limit:7.1f} s of video per s")
    for encoding in ("jpeg", "raw"):
        root = ingest(paths, work / f"throughput-{label}-{encoding}" / "root")
        config = load_config(
            None,
            [
                "materialize.schedule=lofi-anet",
                f"materialize.encoding={encoding}",
                f"materialize.videos_per_shard={len(paths) // WORKERS}",
            ],
        )
        started = time.perf_counter()
        run_materialize(config, root, {}, "bench")
        took = time.perf_counter() - started
        print(
            f"   materialize {encoding:4s}: {took:6.2f} s  {seconds / took:7.1f} s of video "
            f"per s  -> {limit / took:.2f} of the limit (target >= 0.8)"
        )


def single_vs_naive(paths: list[Path], work: Path) -> None:
    schedule = PRESETS["lofi-anet"]
    root = ingest(paths, work / "naive" / "root")
    videos = tuple(ok_videos(root))
    stage = ShardWriter(schedule, root, "jpeg")
    names = tuple(f.name for f in schedule.fidelities)
    started = time.perf_counter()
    stage.process(ShardJob(0, videos, names))
    once = time.perf_counter() - started
    started = time.perf_counter()
    for name in names:
        stage.process(ShardJob(1, videos, (name,)))
    naive = time.perf_counter() - started
    print(
        f"\n2. one pass for {len(names)} fidelities vs one pass each, {len(videos)} videos, "
        f"one process"
    )
    print(
        f"   single pass {once:6.2f} s, naive {naive:6.2f} s -> {naive / once:.2f}x faster "
        f"(target >= 2x)"
    )


def read_vs_decode(paths: list[Path], work: Path, label: str) -> None:
    schedule = PRESETS["lofi-anet"]
    full = schedule.full
    print(
        f"\n3. full-fidelity snippets ({full.snippets}x{full.frames} frames at {full.size}) "
        f"of {len(paths)} videos of {label}, one process"
    )
    root = ingest(paths, work / f"decode-{label}" / "root")
    videos = ok_videos(root)
    decoder = SnippetDecoder(schedule)

    def decode_all():
        for video in videos:
            for _ in decoder.snippets(video.uri, video.start_time, video.duration, (full,)):
                pass

    decoding = best_of(REPEATS, decode_all)
    print(f"   decoding from the source videos: {decoding:6.2f} s (best of {REPEATS})")
    for encoding in ("jpeg", "raw"):
        root = ingest(paths, work / f"read-{label}-{encoding}" / "root")
        stage = ShardWriter(schedule, root, encoding)
        stage.process(ShardJob(0, tuple(ok_videos(root)), ("full",)))
        reader = SnippetReader(root, "full")
        count = sum(1 for _ in reader.videos())
        reading = best_of(REPEATS, lambda reader=reader: sum(1 for _ in reader.videos()))
        stats = reader.stats()
        per_snippet = sum(s["bytes"] for s in stats) / sum(s["rows"] for s in stats)
        print(
            f"   reading {encoding:4s} shards: {reading:6.2f} s for {count} videos -> "
            f"{decoding / reading:5.1f}x faster (target >= 10x, best of {REPEATS}); "
            f"{per_snippet / 1024:7.1f} KiB per snippet"
        )


# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork and exec.
_MEMORY_PROBE = """
import sys
from lofipipe.data.manifest import ok_videos
from lofipipe.workers.shard_writer import ShardJob, ShardWriter
from lofipipe.schemas.schedule import PRESETS
from lofipipe.storage import Store
root = Store(sys.argv[1])
schedule = PRESETS[sys.argv[2]]
stage = ShardWriter(schedule, root, "jpeg")
stage.process(ShardJob(0, tuple(ok_videos(root)), tuple(f.name for f in schedule.fidelities)))
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def peak_memory(short: Path, long: Path, work: Path) -> None:
    print("\n4. peak RSS materializing one video, fresh process each")
    for schedule in ("lofi-anet", "lofi-thumos"):
        peaks = {}
        for label, path in (("1 min", short), ("10 min", long)):
            root = ingest([path], work / f"memory-{schedule}-{label.replace(' ', '')}" / "root")
            out = subprocess.run(
                [sys.executable, "-c", _MEMORY_PROBE, root.url, schedule],
                capture_output=True,
                text=True,
                check=True,
            )
            peaks[label] = int(out.stdout.strip().splitlines()[-1]) / 1024
        print(
            f"   {schedule:12s} 1 min {peaks['1 min']:7.1f} MiB, 10 min "
            f"{peaks['10 min']:7.1f} MiB -> {peaks['10 min'] / peaks['1 min']:.2f}x "
            f"(target <= 1.3x)"
        )


def preprocessing_cost(paths: list[Path], work: Path, label: str) -> None:
    schedule = PRESETS["lofi-anet"]
    videos = ok_videos(ingest(paths, work / f"preprocess-{label}" / "root"))
    limit = best_of(REPEATS, lambda: [decode_only(str(p)) for p in paths])
    print(
        f"\n5. preprocessing presets, every lofi-anet fidelity of {len(paths)} videos of "
        f"{label}, one process (best of {REPEATS})"
    )
    print(f"   decode-only limit: {limit:6.2f} s")
    for preset in ("squash-fast", "squash", "tsm-test"):
        decoder = SnippetDecoder(schedule, preprocess=PREPROCESS_PRESETS[preset])

        def decode_all(decoder=decoder):
            for video in videos:
                for _ in decoder.snippets(video.uri, video.start_time, video.duration):
                    pass

        took = best_of(REPEATS, decode_all)
        print(f"   {preset:12s} {took:6.2f} s -> {limit / took:.2f} of the limit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, a smoke run")
    args = parser.parse_args()
    import ray

    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, logging_level="ERROR")
    if args.quick:
        sets = {"320x180": bench_videos("quick", 2, 20, 320, 180, 30)}
        short = bench_videos("quick-1min", 1, 12, 160, 120, 15)[0]
        long = bench_videos("quick-10min", 1, 60, 160, 120, 15)[0]
    else:
        # ActivityNet-like: two minutes at 30 fps, at the two common download sizes.
        sets = {
            "640x360": bench_videos("anet", 4, 120, 640, 360, 30),
            "1280x720": bench_videos("anet720", 4, 120, 1280, 720, 30),
        }
        short = bench_videos("memory-1min", 1, 60, 320, 240, 15)[0]
        long = bench_videos("memory-10min", 1, 600, 320, 240, 15)[0]
    videos = next(iter(sets.values()))  # the cheapest to decode: the hardest case below
    print(
        f"lofipipe materialize benchmarks ({'quick' if args.quick else 'full'} run); "
        f"inputs under /tmp/lofipipe-bench"
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for label, paths in sets.items():
            throughput(paths, work, label)
        single_vs_naive(videos, work)
        for label, paths in sets.items():
            read_vs_decode(paths, work, label)
        peak_memory(short, long, work)
        for label, paths in sets.items():
            preprocessing_cost(paths, work, label)
    ray.shutdown()


if __name__ == "__main__":
    main()
