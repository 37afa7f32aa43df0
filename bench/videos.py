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
