"""A synthetic untrimmed-video TAL dataset: real H.264 files and ActivityNet-1.3 JSON.

Every action is the same white disc performing one of several motion patterns; the class
is the motion, not the look. Between actions the disc is absent or, now and then, sits
still as an idle decoy, while coloured distractor discs drift over a scrolling textured
background. So finding an action needs the frames (where is the disc) and their motion
(is it moving, and how); no single frame and no constant guess gives it away.

`SynthConfig.domain` picks the look. Domain "a" is the one above: a white disc over a blocky
texture, seen by a still camera. Domain "b" is the same world filmed differently, for
testing adaptation to a domain an encoder was not trained on: smooth striped backgrounds,
a smaller dark disc with a light ring, sensor noise and a swaying, jittering camera that
shifts the whole frame. The plan (ids, subsets, actions, decoys) comes from the seed
alone, so both domains of one seed share their annotations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

from lofipipe.schemas.config import MOTION_PATTERNS, SynthConfig
from lofipipe.storage import Store

_IDLE_DECOY_PROBABILITY = 0.5


def _block_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Domain "a": random grey-brown blocks of 8 x 8 pixels, twice the frame."""
    coarse = rng.uniform(40, 140, size=(height // 4, width // 4, 3))
    return np.kron(coarse, np.ones((8, 8, 1))).astype(np.uint8)


def _stripe_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Domain "b": three tinted sinusoidal gratings of random direction and period, twice
    the frame; whole periods across it, so scrolling wraps around without a seam."""
    rows, cols = (height // 4) * 8, (width // 4) * 8
    yy, xx = np.mgrid[0:rows, 0:cols]
    texture = np.full((rows, cols, 3), 125.0)
    for _ in range(3):
        ky, kx = rng.integers(-5, 6, size=2)
        if ky == 0 and kx == 0:
            kx = 1
        wave = np.sin(2 * np.pi * (ky * yy / rows + kx * xx / cols) + rng.uniform(0, 2 * np.pi))
        texture += wave[..., None] * rng.uniform(10, 30, size=3)
    return np.clip(texture, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class DomainLook:
    """How a domain draws the background and the action disc (and the still decoys), and
    what it adds to the whole frame."""

    texture: Callable[[np.random.Generator, int, int], np.ndarray]  # (rng, width, height)
    disc: tuple[int, int, int]
    ring: tuple[int, int, int]
    radius: float  # of the disc at rest, as a fraction of the frame height
    noise: float  # standard deviation of Gaussian pixel noise (0-255 scale); 0: none
    camera: float  # amplitude of the camera's sway, as a fraction of the frame size


DOMAINS = {
    "a": DomainLook(
        _block_texture, disc=(250, 250, 250), ring=(15, 15, 15), radius=0.09, noise=0, camera=0
    ),
    # Distractors are saturated colours, so a near-black disc (and its light ring) stays
    # the one object of its kind, as the white disc is in domain "a".
    "b": DomainLook(
        _stripe_texture, disc=(25, 20, 30), ring=(235, 235, 225), radius=0.07, noise=6, camera=0.04
    ),
}


@dataclass(frozen=True)
class Action:
    label: str
    start_frame: int
    end_frame: int  # exclusive
    center: tuple[float, float]


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render one video, drawn from the seed."""

    video_id: str
    subset: str
    num_frames: int
    actions: tuple[Action, ...]
    idle: tuple[tuple[int, int, float, float], ...]  # (start, end, x, y) of still decoys
    seed: int


def _triangle(phase: float) -> float:
    """A triangle wave in [-1, 1] with period 1."""
    return 4.0 * abs(phase - math.floor(phase + 0.5)) - 1.0


def motion(
    pattern: str, t: float, duration: float, width: int, height: int, radius: float
) -> tuple[float, float, float]:
    """Offset (dx, dy) from the action's centre and the disc radius, `t` s into the action."""
    w, h, tau = width, height, 2 * math.pi
    if pattern == "swing":
        return 0.3 * w * math.sin(tau * t / 1.0), 0.0, radius
    if pattern == "bounce":
        return 0.0, 0.3 * h * (1 - 2 * abs(math.sin(math.pi * t / 0.8))), radius
    if pattern == "orbit":
        return 0.25 * h * math.cos(tau * t / 1.5), 0.25 * h * math.sin(tau * t / 1.5), radius
    if pattern == "pulse":
        return 0.0, 0.0, radius * (1.0 + 0.6 * math.sin(tau * t / 0.7))
    if pattern == "zigzag":
        return 0.3 * w * _triangle(t / 2.0), 0.2 * h * _triangle(t / 0.5), radius
    if pattern == "figure_eight":
        return 0.3 * w * math.sin(tau * t / 2.0), 0.2 * h * math.sin(2 * tau * t / 2.0), radius
    if pattern == "shake":
        return (0.06 * w * math.sin(tau * 5.0 * t), 0.06 * h * math.cos(tau * 3.7 * t), radius)
    if pattern == "sweep":
        return (0.7 * w * (t / max(duration, 1e-6) - 0.5), 0.0, radius)
    raise ValueError(f"unknown motion pattern {pattern!r}")


def plan_dataset(config: SynthConfig) -> list[VideoPlan]:
    """Draws ids, subsets, action spans and decoys for every video from `config.seed`."""
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(config.videos)
    num_validation = round(config.videos * config.validation_fraction)
    if config.validation_fraction > 0 and config.videos >= 2:
        num_validation = min(max(num_validation, 1), config.videos - 1)
    validation = set(order[:num_validation].tolist())
    labels = MOTION_PATTERNS[: config.classes]
    num_frames = round(config.seconds * config.fps)
    plans = []
    for index in range(config.videos):
        video_rng = np.random.default_rng([config.seed, index])
        count = int(
            video_rng.integers(config.actions_per_video[0], config.actions_per_video[1] + 1)
        )
        lengths = video_rng.uniform(*config.action_seconds, size=count)
        # At least one second of background around every action, the rest spread at random.
        spare = config.seconds - lengths.sum() - (count + 1) * 1.0
        gaps = 1.0 + spare * video_rng.dirichlet(np.ones(count + 1))
        actions, idle, cursor = [], [], 0.0
        for number in range(count):
            gap_start, cursor = cursor, cursor + gaps[number]
            idle += _idle_decoy(video_rng, gap_start, cursor, config)
            start = round(cursor * config.fps)
            end = round((cursor + lengths[number]) * config.fps)
            cursor += lengths[number]
            actions.append(
                Action(
                    label=labels[int(video_rng.integers(len(labels)))],
                    start_frame=start,
                    end_frame=end,
                    center=(
                        video_rng.uniform(0.35, 0.65) * config.width,
                        video_rng.uniform(0.35, 0.65) * config.height,
                    ),
                )
            )
        idle += _idle_decoy(video_rng, cursor, config.seconds, config)
        plans.append(
            VideoPlan(
                video_id=f"synth_{index:04d}",
                subset="validation" if index in validation else "training",
                num_frames=num_frames,
                actions=tuple(actions),
                idle=tuple(idle),
                seed=int(video_rng.integers(2**31)),
            )
        )
    return plans


def _idle_decoy(
    rng: np.random.Generator, gap_start: float, gap_end: float, config: SynthConfig
) -> list[tuple[int, int, float, float]]:
    """A still disc inside a background gap, half a second clear of the actions."""
    if gap_end - gap_start < 2.0 or rng.uniform() >= _IDLE_DECOY_PROBABILITY:
        return []
    start = rng.uniform(gap_start + 0.5, gap_end - 1.5)
    end = rng.uniform(start + 1.0, gap_end - 0.5)
    return [
        (
            round(start * config.fps),
            round(end * config.fps),
            rng.uniform(0.2, 0.8) * config.width,
            rng.uniform(0.2, 0.8) * config.height,
        )
    ]


def _draw_disc(
    image: np.ndarray,
    x: float,
    y: float,
    radius: float,
    color: np.ndarray,
    ring: np.ndarray | None = None,
) -> None:
    height, width = image.shape[:2]
    outer = radius + (2.0 if ring is not None else 0.0)
    x0, x1 = max(int(x - outer), 0), min(int(x + outer) + 2, width)
    y0, y1 = max(int(y - outer), 0), min(int(y + outer) + 2, height)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    distance = (xx - x) ** 2 + (yy - y) ** 2
    patch = image[y0:y1, x0:x1]
    if ring is not None:
        patch[distance <= outer**2] = ring
    patch[distance <= radius**2] = color


class FrameRenderer:
    """Renders the frames of one planned video in the look of `config.domain`."""

    def __init__(self, plan: VideoPlan, config: SynthConfig):
        self.plan, self.config = plan, config
        self.look = DOMAINS[config.domain]
        self.disc = np.array(self.look.disc, np.uint8)
        self.ring = np.array(self.look.ring, np.uint8)
        rng = np.random.default_rng(plan.seed)
        w, h = config.width, config.height
        # Low-frequency texture, twice the frame, scrolled with wrap-around.
        self.texture = self.look.texture(rng, w, h)
        self.scroll = rng.uniform(-12, 12, size=2)  # pixels per second
        self.radius = max(3.0, self.look.radius * h)
        self.distractors = [
            # Saturated colours, never the action disc's white (or domain b's near-black).
            dict(
                color=(
                    rng.integers(120, 230) * np.array([1, 0.6, 0.25])[rng.permutation(3)]
                ).astype(np.uint8),
                radius=self.radius * rng.uniform(0.7, 1.2),
                base=rng.uniform(0.15, 0.85, size=2) * (w, h),
                amp=rng.uniform(0.1, 0.3, size=2) * (w, h),
                freq=rng.uniform(0.05, 0.25, size=2),
                phase=rng.uniform(0, 2 * np.pi, 2),
            )
            for _ in range(config.distractors)
        ]
        # The camera sways slowly on each axis (a hand-held shot); `camera_shift` adds a
        # pixel of jitter per frame on top.
        self.sway_amplitude = self.look.camera * np.array([w, h])
        self.sway_frequency = rng.uniform(0.2, 0.6, size=2)
        self.sway_phase = rng.uniform(0, 2 * np.pi, 2)

    def camera_shift(self, index: int) -> tuple[int, int]:
        """Whole pixels (dx, dy) the scene moves in frame `index`; (0, 0) for a still camera."""
        if self.look.camera == 0:
            return 0, 0
        t = index / self.config.fps
        sway = self.sway_amplitude * np.sin(2 * np.pi * self.sway_frequency * t + self.sway_phase)
        jitter = np.random.default_rng([self.plan.seed, index, 1]).integers(-1, 2, size=2)
        dx, dy = np.round(sway).astype(int) + jitter
        return int(dx), int(dy)

    def frame(self, index: int) -> np.ndarray:
        """The RGB frame (H, W, 3) uint8 shown at frame `index`."""
        config, t = self.config, index / self.config.fps
        th, tw = self.texture.shape[:2]
        oy, ox = (self.scroll * t).astype(int)
        # The camera's shift moves everything by the same pixels: the texture and every disc.
        cx, cy = self.camera_shift(index)
        rows = (np.arange(config.height) + oy - cy) % th
        cols = (np.arange(config.width) + ox - cx) % tw
        image = self.texture[rows][:, cols].copy()
        for d in self.distractors:
            x, y = d["base"] + d["amp"] * np.sin(2 * np.pi * d["freq"] * t + d["phase"])
            _draw_disc(image, x + cx, y + cy, d["radius"], d["color"])
        for start, end, x, y in self.plan.idle:
            if start <= index < end:
                _draw_disc(image, x + cx, y + cy, self.radius, self.disc, self.ring)
        for action in self.plan.actions:
            if action.start_frame <= index < action.end_frame:
                elapsed = (index - action.start_frame) / config.fps
                duration = (action.end_frame - action.start_frame) / config.fps
                dx, dy, radius = motion(
                    action.label, elapsed, duration, config.width, config.height, self.radius
                )
                _draw_disc(
                    image,
                    action.center[0] + dx + cx,
                    action.center[1] + dy + cy,
                    radius,
                    self.disc,
                    self.ring,
                )
        if self.look.noise > 0:
            noise = np.random.default_rng([self.plan.seed, index, 2]).normal(
                0.0, self.look.noise, image.shape
            )
            image = np.clip(image + noise, 0, 255).astype(np.uint8)
        return image


def encode_video(
    frames, handle, width: int, height: int, fps: int, preset: str = "ultrafast"
) -> None:
    """Encodes RGB frames as H.264 (yuv420p) in an MP4 written to a seekable file object.

    Other presets than the default give smaller, costlier-to-decode files (CABAC,
    B-frames, like most published video) but not byte-identical ones.
    """
    with av.open(handle, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        # x264's analysis at its default presets was seen to give different bytes for the
        # same frames from run to run; "ultrafast" on one thread keeps a seed's files
        # byte-identical.
        stream.options = {"crf": "18", "preset": preset, "threads": "1"}
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))


def annotation_database(plans: list[VideoPlan], config: SynthConfig) -> dict:
    """The ActivityNet-1.3 style document describing `plans`."""
    fps = config.fps
    return {
        "version": "VERSION 1.3",
        "taxonomy": [
            {"nodeId": i, "nodeName": name, "parentId": None, "parentName": None}
            for i, name in enumerate(MOTION_PATTERNS[: config.classes])
        ],
        "database": {
            plan.video_id: {
                "subset": plan.subset,
                "duration": plan.num_frames / fps,
                "resolution": f"{config.width}x{config.height}",
                "url": "",
                "annotations": [
                    {"segment": [a.start_frame / fps, a.end_frame / fps], "label": a.label}
                    for a in plan.actions
                ],
            }
            for plan in plans
        },
    }


@dataclass(frozen=True)
class SynthSummary:
    videos: int
    seconds: float
    segments: int
    classes: int
    by_subset: dict[str, int]


def synthesize(
    config: SynthConfig, out: Store, on_video: Callable[[str], None] | None = None
) -> SynthSummary:
    """Writes `videos/<id>.mp4` and `annotations.json` under `out`, deterministic for a seed.

    Videos of an earlier, larger dataset in `out` are removed, so `out` holds exactly the
    dataset the annotations describe.
    """
    plans = plan_dataset(config)
    wanted = {f"videos/{plan.video_id}.mp4" for plan in plans}
    for stale in set(out.list("videos", pattern="synth_*.mp4")) - wanted:
        out.remove(stale)
    for plan in plans:
        renderer = FrameRenderer(plan, config)
        frames = (renderer.frame(i) for i in range(plan.num_frames))
        with out.writer(f"videos/{plan.video_id}.mp4") as handle:
            encode_video(frames, handle, config.width, config.height, config.fps)
        if on_video:
            on_video(plan.video_id)
    database = annotation_database(plans, config)
    out.write_text("annotations.json", json.dumps(database, indent=1) + "\n")
    by_subset: dict[str, int] = {}
    for plan in plans:
        by_subset[plan.subset] = by_subset.get(plan.subset, 0) + 1
    return SynthSummary(
        videos=len(plans),
        seconds=sum(p.num_frames for p in plans) / config.fps,
        segments=sum(len(p.actions) for p in plans),
        classes=config.classes,
        by_subset=by_subset,
    )
