import json

import av
import numpy as np
import pytest
from click.testing import CliRunner

from lofipipe.cli import main
from lofipipe.errors import ConfigError
from lofipipe.media.synth import MOTION_PATTERNS, synthesize
from lofipipe.schemas.config import load_config
from lofipipe.storage import Store

SMALL = [
    "synth.videos=4",
    "synth.seconds=10",
    "synth.width=64",
    "synth.height=48",
    "synth.fps=10",
    "synth.actions_per_video=[1, 2]",
    "synth.action_seconds=[1.5, 3]",
    "synth.classes=3",
]


def _make(tmp_path, name, *overrides):
    config = load_config(None, [*SMALL, *overrides]).synth
    out = tmp_path / name
    synthesize(config, Store(str(out)))
    return out, config


def _decode(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first, _ = _make(tmp_path, "a")
    second, _ = _make(tmp_path, "b")
    other, _ = _make(tmp_path, "c", "synth.seed=1")
    names = sorted(p.name for p in (first / "videos").iterdir())
    assert names == [f"synth_{i:04d}.mp4" for i in range(4)]
    for name in names:
        assert (first / "videos" / name).read_bytes() == (second / "videos" / name).read_bytes()
    assert (first / "annotations.json").read_text() == (second / "annotations.json").read_text()
    assert (first / "annotations.json").read_text() != (other / "annotations.json").read_text()
    assert (first / "videos" / names[0]).read_bytes() != (other / "videos" / names[0]).read_bytes()


def test_annotations_are_valid_activitynet(tmp_path):
    out, config = _make(tmp_path, "d", "synth.videos=8")
    document = json.loads((out / "annotations.json").read_text())
    assert document["version"] == "VERSION 1.3"
    database = document["database"]
    assert set(database) == {f"synth_{i:04d}" for i in range(8)}
    assert {entry["subset"] for entry in database.values()} == {"training", "validation"}
    labels = set()
    for video_id, entry in database.items():
        with av.open(str(out / "videos" / f"{video_id}.mp4")) as container:
            stream = container.streams.video[0]
            assert (stream.width, stream.height) == (64, 48)
            assert stream.codec_context.name == "h264"
            assert float(stream.duration * stream.time_base) == pytest.approx(entry["duration"])
        spans = sorted(a["segment"] for a in entry["annotations"])
        assert 1 <= len(spans) <= 2
        for start, end in spans:
            assert 0 < start < end < entry["duration"]
            assert 1.5 - 0.1 <= end - start <= 3 + 0.1
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start - end >= 0.9  # at least a second of background between actions
        labels |= {a["label"] for a in entry["annotations"]}
    assert labels <= set(MOTION_PATTERNS[:3])


def _white_disc(frame):
    mask = (frame > 215).all(axis=2)
    if mask.sum() < 4:
        return None
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean(), mask.sum()


def test_actions_need_frames_and_motion(tmp_path):
    """The disc is visible exactly during actions (and still decoys) and moves only in
    actions: where and what an action is can be read off the frames' motion only."""
    out, config = _make(tmp_path, "e", "synth.videos=6")
    from lofipipe.media.synth import plan_dataset

    moving, still = 0, 0
    for plan in plan_dataset(config):
        frames = _decode(out / "videos" / f"{plan.video_id}.mp4")
        assert len(frames) == plan.num_frames
        visible = {i for a in plan.actions for i in range(a.start_frame, a.end_frame)}
        visible |= {i for s, e, _, _ in plan.idle for i in range(s, e)}
        for index, frame in enumerate(frames):
            seen = _white_disc(frame) is not None
            near_edge = any(
                abs(index - b) <= 1 for a in plan.actions for b in (a.start_frame, a.end_frame)
            )
            if not near_edge:
                assert seen == (index in visible), (plan.video_id, index)
        for action in plan.actions:
            track = np.array(
                [
                    _white_disc(frames[i])
                    for i in range(action.start_frame + 1, action.end_frame - 1)
                ]
            )
            assert track.std(axis=0).max() > 1.0, (plan.video_id, action)
            moving += 1
        for start, end, _, _ in plan.idle:
            track = np.array([_white_disc(frames[i]) for i in range(start + 1, end - 1)])
            assert track[:, :2].std(axis=0).max() < 0.5
            still += 1
    assert moving > 0 and still > 0


def test_cli_synth_options_and_summary(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "synth",
            str(tmp_path / "s"),
            "--videos",
            "2",
            "--seconds",
            "20",
            "--size",
            "96x64",
            "--fps",
            "12",
            "--classes",
            "2",
            "--seed",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "synth: 2 videos" in result.output
    with av.open(str(tmp_path / "s/videos/synth_0000.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (96, 64, 12)
        assert stream.frames == 240
    resolved = (tmp_path / "s/synth.yaml").read_text()
    assert resolved.startswith("# Resolved by: lofipipe") and "seed: 5" in resolved


def test_cli_synth_impossible_request_names_the_key(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "s"), "--seconds", "5"])
    assert result.exit_code == 2
    assert "synth.seconds: must be at least" in result.output
    assert not (tmp_path / "s").exists()


def test_rerun_with_fewer_videos_removes_the_extra_ones(tmp_path):
    out, _ = _make(tmp_path, "f", "synth.videos=3")
    _make(tmp_path, "f", "synth.videos=1")
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["synth_0000.mp4"]
    assert list(json.loads((out / "annotations.json").read_text())["database"]) == ["synth_0000"]


def _dark_disc(frame):
    """Centre and area of domain b's near-black disc (its light ring excluded)."""
    mask = (frame < 50).all(axis=2)
    if mask.sum() < 4:
        return None
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean(), mask.sum()


def test_domain_b_keeps_the_plan_and_changes_the_look(tmp_path):
    """Same seed, same annotations and video shapes; the frames look different, and domain
    b's disc is dark where domain a's is white."""
    a, _ = _make(tmp_path, "a")
    b, config = _make(tmp_path, "b", "synth.domain=b")
    again, _ = _make(tmp_path, "b2", "synth.domain=b")
    assert (a / "annotations.json").read_text() == (b / "annotations.json").read_text()
    from lofipipe.media.synth import plan_dataset

    for plan in plan_dataset(config):
        name = f"{plan.video_id}.mp4"
        assert (b / "videos" / name).read_bytes() == (again / "videos" / name).read_bytes()
        frames_a, frames_b = _decode(a / "videos" / name), _decode(b / "videos" / name)
        assert len(frames_b) == len(frames_a) == plan.num_frames
        assert frames_b[0].shape == frames_a[0].shape == (48, 64, 3)
        difference = np.abs(np.stack(frames_a).astype(int) - np.stack(frames_b)).mean()
        assert difference > 20, (plan.video_id, difference)
        for action in plan.actions:
            middle = (action.start_frame + action.end_frame) // 2
            x, y, _ = _white_disc(frames_a[middle])
            assert frames_a[middle][round(y), round(x)].min() > 215
            x, y, _ = _dark_disc(frames_b[middle])
            assert frames_b[middle][round(y), round(x)].max() < 60


def test_domain_b_camera_moves_the_whole_scene():
    """In domain b a still decoy moves in the frame exactly as the camera does; domain a's
    camera stands still."""
    from lofipipe.media.synth import FrameRenderer, plan_dataset

    config = load_config(None, [*SMALL, "synth.videos=8", "synth.domain=b"]).synth
    still = 0
    for plan in plan_dataset(config):
        renderer = FrameRenderer(plan, config)
        for start, end, _, _ in plan.idle:
            frames = range(start, end)
            seen = np.array([_dark_disc(renderer.frame(i))[:2] for i in frames])
            shifts = np.array([renderer.camera_shift(i) for i in frames])
            assert np.abs(shifts).max() <= 0.04 * 64 + 2  # the sway's amplitude and jitter
            assert shifts.std(axis=0).max() > 0.5
            assert (seen - shifts).std(axis=0).max() < 0.3
            still += 1
    assert still > 0
    domain_a = load_config(None, SMALL).synth
    renderer = FrameRenderer(plan_dataset(domain_a)[0], domain_a)
    assert {renderer.camera_shift(i) for i in range(0, 100, 7)} == {(0, 0)}


def test_domain_is_checked_and_set_from_the_cli(tmp_path):
    with pytest.raises(ConfigError, match=r"synth\.domain: must be one of a, b, got 'c'"):
        load_config(None, ["synth.domain=c"])
    result = CliRunner().invoke(
        main, ["synth", str(tmp_path / "s"), "--videos", "1", "--size", "64x48", "--domain", "b"]
    )
    assert result.exit_code == 0, result.output
    assert "domain: b" in (tmp_path / "s/synth.yaml").read_text()
