"""Materialize benchmarks, each a ratio of two things measured side by side in one run.

    .venv/bin/python bench/materialize_bench.py            # the full run (~10 min)
    .venv/bin/python bench/materialize_bench.py --quick    # small inputs, a smoke run
    .venv/bin/python bench/materialize_bench.py --parts 1,3  # only those parts

1. Throughput against the physical limit: `lofipipe materialize` of every lofi-anet
   fidelity on a local Ray, against a bare PyAV decode-only loop over the same files with
   the same number of processes. Target: >= 0.8.
2. One decode pass for all fidelities against one pass per fidelity (the naive way), the
   same stage in one process. Target: >= 2x faster.
3. Reading full-fidelity snippets from shards against decoding them from the source video,
   per frame encoding, with the bytes each video's lofi-anet shards take against the source
   video and raw, and the pixel error of each lossy encoding against raw at every
   fidelity. Targets: >= 10x faster; the default encoding <= the source and <= 0.15x raw.
4. Peak memory (RSS) of materializing a 10-minute video against a 1-minute one of the same
   size, in fresh processes, for resize (lofi-anet) and stride (lofi-thumos) sampling.
   Target: <= 1.3x.
5. The cost of each preprocessing preset: decoding every lofi-anet fidelity with `squash`
   (bilinear, exact), `tsm-test` (short side and centre crop) and `squash-fast` (FFmpeg's
   FAST_BILINEAR) against decode-only of the same files, in one process, resizing in YUV
   as for h264 and in RGB as for jpeg and raw. Tells whether the inexact `squash-fast` is
   worth keeping.
6. The reader against training: frames per second per core that `SnippetReader` delivers
   from default (h264) shards at each LoFi fidelity, against the frames per second that a
   tsm_r18 LoFi training step (forward and backward, one video) consumes on this machine's
   CPUs.

Parts 1, 3 and 6 run on 2-minute videos of real footage at 640x360 and 1280x720
(bench/videos.py `web_videos`: the `bench` extra's clips, encoded as the web serves them).
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
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from videos import bench_videos, web_videos  # noqa: E402

from lofipipe.data.manifest import ok_videos  # noqa: E402
from lofipipe.data.snippets import SnippetReader  # noqa: E402
from lofipipe.media.decode import SnippetDecoder  # noqa: E402
from lofipipe.media.frame_codec import ENCODINGS, FrameCodec  # noqa: E402
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
    videos = [str(p) for p in paths]
    print(f"\n1. throughput, {len(paths)} videos of {label}, {WORKERS} processes")
    # Warm-up, untimed: the pool's processes start, as Ray's workers do.
    warm = ingest(paths[:WORKERS], work / f"throughput-{label}-warm-up" / "root")
    run_materialize(
        load_config(None, ["materialize.schedule=lofi-anet", "materialize.videos_per_shard=1"]),
        warm,
        {},
        "bench",
    )
    limits: list[float] = []
    took: dict[str, list[float]] = {encoding: [] for encoding in ENCODINGS}
    with multiprocessing.Pool(WORKERS) as pool:
        seconds = sum(pool.map(decode_only, videos))
        # Each round times decode-only and then every encoding, so that both sides of each
        # ratio see the machine alike; the best round of each counts.
        for round_ in range(REPEATS):
            started = time.perf_counter()
            pool.map(decode_only, videos)
            limits.append(time.perf_counter() - started)
            for encoding in ENCODINGS:
                root = ingest(paths, work / f"throughput-{label}-{encoding}-{round_}" / "root")
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
                took[encoding].append(time.perf_counter() - started)
    limit = min(limits)
    print(
        f"   decode-only limit: {limit:6.2f} s  {seconds / limit:7.1f} s of video per s "
        f"({seconds:.0f} s of video; best of {REPEATS} rounds)"
    )
    for encoding in ENCODINGS:
        best = min(took[encoding])
        print(
            f"   materialize {encoding:4s}: {best:6.2f} s  {seconds / best:7.1f} s of video "
            f"per s  -> {limit / best:.2f} of the limit (target >= 0.8)"
        )


def single_vs_naive(paths: list[Path], work: Path) -> None:
    schedule = PRESETS["lofi-anet"]
    root = ingest(paths, work / "naive" / "root")
    videos = tuple(ok_videos(root))
    stage = ShardWriter(schedule, root)
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
    source = sum(path.stat().st_size for path in paths) / len(paths)
    print(
        f"\n3. full-fidelity snippets ({full.snippets}x{full.frames} frames at {full.size}) "
        f"of {len(paths)} videos of {label}, one process; sources {source / 2**20:.1f} MiB "
        f"a video"
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
    raw_bytes = len(paths) * sum(
        f.snippets * f.frames * 3 * f.size**2 for f in schedule.fidelities
    )  # resize sampling: the same for every video
    roots = {}
    for encoding in ENCODINGS:
        root = roots[encoding] = ingest(paths, work / f"read-{label}-{encoding}" / "root")
        stage = ShardWriter(schedule, root, FrameCodec(encoding))
        stage.process(
            ShardJob(0, tuple(ok_videos(root)), tuple(f.name for f in schedule.fidelities))
        )
        reader = SnippetReader(root, "full")
        count = sum(1 for _ in reader.videos())
        reading = best_of(REPEATS, lambda reader=reader: sum(1 for _ in reader.videos()))
        stored = sum(
            s["bytes"] for f in schedule.fidelities for s in SnippetReader(root, f.name).stats()
        )
        print(
            f"   reading {encoding:4s} shards: {reading:6.3f} s for {count} videos -> "
            f"{decoding / reading:5.1f}x faster (target >= 10x, best of {REPEATS}); "
            f"all fidelities {stored / len(paths) / 2**20:6.1f} MiB a video = "
            f"{stored / len(paths) / source:5.2f}x the source, {stored / raw_bytes:.3f}x raw"
        )
    print("   pixel error against raw, every frame of every fidelity: mean |error|, PSNR")
    for encoding in ENCODINGS[:-1]:
        figures = []
        for fidelity in schedule.fidelities:
            pairs = zip(
                SnippetReader(roots[encoding], fidelity.name).videos(),
                SnippetReader(roots["raw"], fidelity.name).videos(),
                strict=True,
            )
            absolute = squared = count = 0.0
            for lossy, raw in pairs:
                error = lossy.frames.float() - raw.frames.float()
                absolute += float(error.abs().sum())
                squared += float(error.square().sum())
                count += error.numel()
            psnr = 10 * np.log10(255**2 * count / squared)
            figures.append(f"{fidelity.name} {absolute / count:.1f} levels {psnr:.1f} dB")
        print(f"   {encoding:4s}: " + ", ".join(figures))


# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork and exec.
_MEMORY_PROBE = """
import sys
from lofipipe.data.manifest import ok_videos
from lofipipe.workers.shard_writer import ShardJob, ShardWriter
from lofipipe.schemas.schedule import PRESETS
from lofipipe.storage import Store
root = Store(sys.argv[1])
schedule = PRESETS[sys.argv[2]]
stage = ShardWriter(schedule, root)
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
    for path, yuv in (("YUV (h264)", True), ("RGB (jpeg, raw)", False)):
        figures = []
        for preset in ("squash-fast", "squash", "tsm-test"):
            decoder = SnippetDecoder(schedule, preprocess=PREPROCESS_PRESETS[preset], yuv=yuv)

            def decode_all(decoder=decoder):
                for video in videos:
                    for _ in decoder.snippets(video.uri, video.start_time, video.duration):
                        pass

            took = best_of(REPEATS, decode_all)
            figures.append(f"{preset} {took:5.2f} s -> {limit / took:.2f}")
        print(f"   {path:16s} " + ", ".join(figures) + " of the limit")


def reader_vs_training(paths: list[Path], work: Path, label: str) -> None:
    import torch

    from lofipipe.models.registry import build_encoder
    from lofipipe.models.tal_head import TALHead
    from lofipipe.schemas.config import HeadConfig
    from lofipipe.training.memory_plan import synthetic_video
    from lofipipe.training.snippet_detector import SnippetDetector, freeze_batchnorm
    from lofipipe.training.trainer import head_losses

    schedule = PRESETS["lofi-anet"]
    root = ingest(paths, work / f"reader-{label}" / "root")
    ShardWriter(schedule, root).process(
        ShardJob(0, tuple(ok_videos(root)), tuple(f.name for f in schedule.train))
    )
    head = HeadConfig()
    encoder = build_encoder("tsm_r18")
    model = SnippetDetector(encoder, TALHead.from_config(encoder.dim, 20, head))
    freeze_batchnorm(model)  # as LofiTrainer trains
    cores = torch.get_num_threads()
    print(
        f"\n6. the reader against training, lofi-anet fidelities of {len(paths)} videos of "
        f"{label}; reader on 1 thread, training step on {cores} threads"
    )
    for fidelity in schedule.train:
        reader = SnippetReader(root, fidelity.name, threads=1)
        frames = len(paths) * fidelity.snippets * fidelity.frames
        reading = best_of(REPEATS, lambda reader=reader: sum(1 for _ in reader.videos()))
        video = synthetic_video(fidelity, np.random.default_rng(0))

        def step(video=video):
            output, targets = model([video], head.levels)
            head_losses(output, targets, 1)[0].backward()

        training = best_of(2, step)
        delivered = frames / reading
        consumed = fidelity.snippets * fidelity.frames / training
        print(
            f"   {fidelity.name:8s} reader {delivered:7.0f} frames/s per core; a training "
            f"step {consumed:5.0f} frames/s on {cores} cores -> one core reads for "
            f"{delivered / consumed:5.1f} such steps"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, a smoke run")
    parser.add_argument(
        "--parts", default="1,2,3,4,5,6", help="which parts to run, e.g. 1,3 (default: all)"
    )
    args = parser.parse_args()
    parts = {int(part) for part in args.parts.split(",")}
    import ray

    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, logging_level="ERROR")
    if args.quick:
        sets = {"320x180": bench_videos("quick", 2, 20, 320, 180, 30)}
        short = bench_videos("quick-1min", 1, 12, 160, 120, 15)[0]
        long = bench_videos("quick-10min", 1, 60, 160, 120, 15)[0]
    else:
        # ActivityNet-like: two minutes of real footage at the two common download sizes.
        sets = {
            "640x360": web_videos("web360", 4, 120, 640, 360),
            "1280x720": web_videos("web720", 4, 120, 1280, 720),
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
            if 1 in parts:
                throughput(paths, work, label)
        if 2 in parts:
            single_vs_naive(videos, work)
        for label, paths in sets.items():
            if 3 in parts:
                read_vs_decode(paths, work, label)
        if 4 in parts:
            peak_memory(short, long, work)
        for label, paths in sets.items():
            if 5 in parts:
                preprocessing_cost(paths, work, label)
        if 6 in parts:
            reader_vs_training(videos[:1], work, next(iter(sets)))
    ray.shutdown()


if __name__ == "__main__":
    main()
