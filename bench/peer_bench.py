"""Peer benchmark: loading a video's full-fidelity lofi-anet snippets from lofipipe's shards
against decoding them from the source video with decord, torchcodec and PyAV.

    .venv/bin/python bench/peer_bench.py                # the full run (~10 min)
    .venv/bin/python bench/peer_bench.py --quick        # one short small video, a smoke run
    .venv/bin/python bench/peer_bench.py --torchcodec-python /tmp/tcvenv/bin/python

What is loaded: the snippets that training and extraction read per video, lofi-anet's full
fidelity (100 snippets x 8 frames squashed to 224 x 224, uint8), at the frame times that
`plan_snippets` gives, from `--videos` 2-minute videos of real footage (bench/videos.py
`web_videos`, H.264 CRF 23 at 25 fps) at 640x360 and at 1280x720. Each loader ends with
the same [100, 8, 3, 224, 224] uint8 tensor per video, timed from the file's path to that
tensor, best of 3 over all videos:

- decord, as OpenTAD and AdaTAD read (mmaction's DecordInit and DecordDecode):
  `VideoReader(path)`, `get_batch` on the frame indices round(time x fps), full-size frames
  that are then resized (torch bilinear, antialiased); and, its faster way, the same with
  `VideoReader(path, width=224, height=224)`, FFmpeg resizing. The ratios take the faster
  of the two.
- torchcodec: `VideoDecoder(path).get_frames_played_at(times)`, then the same resize. It
  runs in `--torchcodec-python` (default: this Python), a subprocess that times itself, so
  it can live in its own virtual environment: PyPI's torchcodec 0.14 and later link CUDA
  torch libraries and do not load with a CPU build of torch; 0.13 (CPU-only wheel) does:
      python3 -m venv /tmp/tcvenv
      /tmp/tcvenv/bin/pip install torch==2.13.0 numpy
      /tmp/tcvenv/bin/pip install --no-deps torchcodec==0.13.0
  It uses the system's FFmpeg 4 to 8 (here Debian's FFmpeg 5: apt-get install libavcodec59
  libavformat59 libavdevice59 libavfilter8 libswscale6). When it cannot be imported the
  bench says why in one line and goes on without it.
- PyAV: lofipipe's own `SnippetDecoder` on the source video (what `lofipipe materialize`
  does once per video).
- shards: lofipipe's `SnippetReader(root, "full").videos()` after the videos are ingested
  and materialized, once per frame encoding (`ENCODINGS`; the default one marked), with
  the bytes its shards take per video beside the source file's.

Threads: every decoder runs with FFmpeg's own choice of threads (decord's and PyAV's
default, torchcodec's `num_ffmpeg_threads=0`) and resizes with torch's default intra-op
threads, on this machine's cores; one video at a time, in one process. Each loader's first
video is compared with PyAV's (mean absolute difference in pixel levels) to show that all
load the same frames: a few levels come from the different resize filters and from decord
taking the nearest frame where the others take the one shown at that time; tens would mean
other frames. Targets: shards read >= 5x faster than decord and >= 10x faster than PyAV.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from materialize_bench import REPEATS, best_of, ingest  # noqa: E402
from videos import web_videos  # noqa: E402

from lofipipe.data.manifest import SourceVideo, ok_videos  # noqa: E402
from lofipipe.data.snippets import SnippetReader  # noqa: E402
from lofipipe.media.decode import SnippetDecoder, plan_snippets  # noqa: E402
from lofipipe.media.frame_codec import ENCODINGS, FrameCodec  # noqa: E402
from lofipipe.schemas.config import MaterializeConfig  # noqa: E402
from lofipipe.schemas.schedule import PRESETS  # noqa: E402
from lofipipe.workers.shard_writer import ShardJob, ShardWriter  # noqa: E402

SCHEDULE = PRESETS["lofi-anet"]
FULL = SCHEDULE.full
MiB = 2**20


def frame_times(video: SourceVideo) -> np.ndarray:
    """The (L, F) times of the full fidelity's frames, seconds from the video's start."""
    return plan_snippets(SCHEDULE, FULL, video.duration).targets


def squash(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 frames resized to (L, F, 3, S, S), as torchvision's bilinear
    antialiased Resize does (uint8 in, uint8 out)."""
    size = FULL.size
    if frames.shape[-2:] != (size, size):
        frames = torch.nn.functional.interpolate(
            frames, size=(size, size), mode="bilinear", antialias=True
        )
    return frames.reshape(FULL.snippets, FULL.frames, 3, size, size)


def decord_snippets(video: SourceVideo, resize_in_decoder: bool) -> torch.Tensor:
    import decord

    size = {"width": FULL.size, "height": FULL.size} if resize_in_decoder else {}
    reader = decord.VideoReader(video.uri, **size)
    indices = np.rint(frame_times(video) * reader.get_avg_fps()).astype(np.int64)
    indices = np.clip(indices, 0, len(reader) - 1).ravel()
    frames = torch.from_numpy(reader.get_batch(indices.tolist()).asnumpy())
    return squash(frames.permute(0, 3, 1, 2))


def pyav_snippets(video: SourceVideo) -> torch.Tensor:
    decoder = SnippetDecoder(SCHEDULE)
    snippets = decoder.snippets(video.uri, video.start_time, video.duration, (FULL,))
    return torch.from_numpy(np.stack([s.frames for s in snippets])).permute(0, 1, 4, 2, 3)


# Runs in --torchcodec-python: imports neither lofipipe nor anything but torch and numpy.
# argv: a JSON file of {"videos": [[path, [seconds...]], ...], "size", "repeats", "first"}.
_TORCHCODEC_PROBE = """
import json, sys, time
import numpy as np, torch, torchcodec
from torchcodec.decoders import VideoDecoder
job = json.load(open(sys.argv[1]))
size = job["size"]
def load(path, seconds):
    decoder = VideoDecoder(path, num_ffmpeg_threads=0)
    meta = decoder.metadata
    last = meta.end_stream_seconds - 1e-3
    seconds = np.clip(seconds, meta.begin_stream_seconds, last).tolist()
    frames = decoder.get_frames_played_at(seconds).data
    return torch.nn.functional.interpolate(
        frames, size=(size, size), mode="bilinear", antialias=True
    )
times = []
for _ in range(job["repeats"]):
    started = time.perf_counter()
    loaded = [load(path, seconds) for path, seconds in job["videos"]]
    times.append(time.perf_counter() - started)
np.save(job["first"], loaded[0].numpy())
print(json.dumps({"seconds": min(times), "version": torchcodec.__version__}))
"""


def torchcodec_time(python: str, videos: list[SourceVideo], scratch: Path) -> tuple:
    """(best seconds, version, first video's frames), or (None, why, None)."""
    job = scratch / "torchcodec-job.json"
    first = scratch / "torchcodec-first.npy"
    entries = [[v.uri, (v.start_time + frame_times(v)).ravel().tolist()] for v in videos]
    job.write_text(
        json.dumps({"videos": entries, "size": FULL.size, "repeats": REPEATS, "first": str(first)})
    )
    out = subprocess.run(
        [python, "-c", _TORCHCODEC_PROBE, str(job)], capture_output=True, text=True
    )
    if out.returncode != 0:
        # torchcodec's own message tries every FFmpeg it knows; the root cause is a library
        # its core cannot load (e.g. CUDA torch's, with a CPU torch).
        errors = [
            line for line in out.stderr.splitlines() if re.match(r"\w+(Error|Exception): ", line)
        ]
        cause = next((e for e in errors if "cannot open shared object" in e), None)
        cause = cause or (errors[-1] if errors else f"exit status {out.returncode}")
        return None, f"{cause} (in {python}; see --torchcodec-python in the docstring)", None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    frames = torch.from_numpy(np.load(first)).reshape(
        FULL.snippets, FULL.frames, 3, FULL.size, FULL.size
    )
    return result["seconds"], result["version"], frames


def timed(load, videos: list[SourceVideo]) -> tuple[float, torch.Tensor]:
    """Best of REPEATS loads of every video; the first video's snippets."""
    loaded: list[torch.Tensor] = []

    def work() -> None:
        loaded[:] = [load(video) for video in videos]

    return best_of(REPEATS, work), loaded[0]


def difference(frames: torch.Tensor, reference: torch.Tensor) -> float:
    return float((frames.float() - reference.float()).abs().mean())


def compare(label: str, paths: list[Path], work: Path, torchcodec_python: str) -> None:
    links = work / label / "videos"
    links.mkdir(parents=True)
    for path in paths:  # only these videos, whatever else the cache folder holds
        (links / path.name).symlink_to(path)
    videos = ok_videos(ingest(sorted(links.iterdir()), work / label / "root"))
    source = sum(p.stat().st_size for p in paths) / len(paths)
    seconds = sum(v.duration for v in videos)
    print(
        f"\n{label}: {len(videos)} video{'s' if len(videos) > 1 else ''}, {seconds:.0f} s of "
        f"video, source {source / MiB:.1f} MiB per video; {FULL.snippets}x{FULL.frames} frames at "
        f"{FULL.size} per video (best of {REPEATS})"
    )
    pyav, reference = timed(pyav_snippets, videos)
    rows = [("PyAV, lofipipe SnippetDecoder", pyav, 0.0)]
    decords = []
    for resize_in_decoder, name in ((False, "full frames, then resize"), (True, "width/height")):
        took, frames = timed(lambda v, r=resize_in_decoder: decord_snippets(v, r), videos)
        rows.append((f"decord, {name}", took, difference(frames, reference)))
        decords.append(took)
    torchcodec, note, frames = torchcodec_time(torchcodec_python, videos, work / label)
    if torchcodec is not None:
        rows.append((f"torchcodec {note}", torchcodec, difference(frames, reference)))
    print(f"   {'loader':44s} {'seconds':>7s}  {'s of video/s':>12s}  mean |diff| vs PyAV")
    for name, took, diff in rows:
        print(f"   {name:44s} {took:7.2f}  {seconds / took:12.1f}  {diff:5.2f}")
    if torchcodec is None:
        print(f"   torchcodec skipped: {note}")
    default = MaterializeConfig().encoding
    for encoding in ENCODINGS:
        root = ingest(sorted(links.iterdir()), work / label / encoding / "root")
        ShardWriter(SCHEDULE, root, FrameCodec(encoding)).process(
            ShardJob(0, tuple(ok_videos(root)), ("full",))
        )
        reader = SnippetReader(root, "full")
        frames = next(iter(reader.videos())).frames
        reading = best_of(REPEATS, lambda reader=reader: [v.frames for v in reader.videos()])
        stored = sum(s["bytes"] for s in reader.stats()) / len(videos)
        name = f"shards, {encoding}{' (default)' if encoding == default else ''}"
        print(
            f"   {name:44s} {reading:7.2f}  {seconds / reading:12.1f}  "
            f"{difference(frames, reference):5.2f}  {stored / MiB:7.1f} MiB per video "
            f"({stored / source:.2f}x the source)"
        )
        ratios = [f"{min(decords) / reading:.1f}x faster than decord (target >= 5x)"]
        if torchcodec is not None:
            ratios.append(f"{torchcodec / reading:.1f}x than torchcodec")
        ratios.append(f"{pyav / reading:.1f}x than PyAV (target >= 10x)")
        print(f"      -> read {', '.join(ratios)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short small video")
    parser.add_argument("--videos", type=int, default=2, help="videos per size")
    parser.add_argument(
        "--torchcodec-python",
        default=sys.executable,
        help="a Python whose environment has torchcodec (see the module docstring)",
    )
    args = parser.parse_args()
    if args.quick:
        sets = {"320x180": web_videos("web180-quick", 1, 20, 320, 180)}
    else:
        sets = {
            "640x360": web_videos("web360", args.videos, 120, 640, 360),
            "1280x720": web_videos("web720", args.videos, 120, 1280, 720),
        }
    import av
    import decord

    print(
        f"lofipipe peer benchmark ({'quick' if args.quick else 'full'} run): loading the "
        f"{SCHEDULE.name} full-fidelity snippets; inputs under /tmp/lofipipe-bench"
    )
    print(
        f"   {os.cpu_count()} CPUs, one video at a time in one process; every decoder uses "
        f"FFmpeg's own choice of threads, resizes use torch's {torch.get_num_threads()}"
    )
    print(
        f"   decord {decord.__version__}, PyAV {av.__version__} (FFmpeg "
        f"{av.ffmpeg_version_info}), torch {torch.__version__}, frame encodings "
        f"{', '.join(ENCODINGS)}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for label, paths in sets.items():
            compare(label, paths, Path(scratch), args.torchcodec_python)
    # Other work on the machine slows each loader by its own share: worth knowing when the
    # ratios move between runs.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average at the end (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
