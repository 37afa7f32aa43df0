"""The decode stage in-process: snippet counts, times, frame choice, single pass."""

import av
import numpy as np
import pytest
import torch
from support.media import frame_level, write_marked_video, write_timed_video, write_video
from torch.nn import functional

from lofipipe.errors import VideoFailure
from lofipipe.media.decode import SnippetDecoder, normal_rotation, plan_snippets
from lofipipe.schemas.preprocess import PREPROCESS_PRESETS
from lofipipe.schemas.schedule import PRESETS, Fidelity, Schedule
from lofipipe.workers.video_prober import VideoItem, VideoProber

RESIZE = Schedule(
    "t", Fidelity("full", 4, 2, 16), (Fidelity("small", 4, 2, 8), Fidelity("few", 2, 2, 16))
)
STRIDE = Schedule(
    "s",
    Fidelity("full", 4, 4, 16),
    (Fidelity("half", 2, 4, 8),),
    sampling="stride",
    fps=10.0,
    stride=2,
)


def _probe(path):
    row = VideoProber().process(VideoItem("v", str(path), path.stat().st_size, "s"))
    assert row["status"] == "ok", row["error"]
    return row


def _decode(schedule, path, fidelities=None):
    row = _probe(path)
    decoder = SnippetDecoder(schedule)
    return list(decoder.snippets(str(path), row["start_time"], row["duration"], fidelities))


def _levels(snippet):
    """The source frame index shown in each snippet frame (timed videos encode it)."""
    return [round(float(frame.mean()) / 8) for frame in snippet.frames]


def test_resize_counts_and_times():
    plan = plan_snippets(RESIZE, RESIZE.full, 3.0)
    assert np.allclose(plan.start, [0, 0.75, 1.5, 2.25])
    assert np.allclose(plan.end, [0.75, 1.5, 2.25, 3.0])
    assert np.allclose(plan.center, [0.375, 1.125, 1.875, 2.625])
    assert np.allclose(plan.targets[1], [0.9375, 1.3125])


def test_stride_counts_and_times():
    plan = plan_snippets(STRIDE, STRIDE.full, 3.05)  # 30 frames at 10 fps
    assert len(plan.start) == (30 - 4) // 2 + 1 == 14
    assert np.allclose(plan.start[:3], [0.0, 0.2, 0.4])
    assert np.allclose(plan.end[:3], [0.4, 0.6, 0.8])
    assert np.allclose(plan.targets[2], [0.4, 0.5, 0.6, 0.7])
    reduced = plan_snippets(STRIDE, STRIDE.train[0], 3.05)
    assert STRIDE.snippet_stride(STRIDE.train[0]) == 4
    assert len(reduced.start) == (30 - 4) // 4 + 1 == 7
    keys = list(plan.keys())
    assert len(keys) == 14 * 4 and keys == sorted(keys)
    with pytest.raises(VideoFailure, match="shorter than one snippet"):
        plan_snippets(STRIDE, STRIDE.full, 0.35)


def test_stride_frames_are_the_frames_on_the_grid(tmp_path):
    path = write_timed_video(tmp_path / "cfr.mp4", [i / 10 for i in range(30)])
    snippets = [s for s in _decode(STRIDE, path) if s.fidelity == "full"]
    assert len(snippets) == 14
    for snippet in snippets:
        first = snippet.index * 2
        assert _levels(snippet) == [first, first + 1, first + 2, first + 3]
        assert np.allclose(snippet.frame_times, [(first + j) / 10 for j in range(4)])


def test_variable_frame_rate_takes_the_frame_on_screen(tmp_path):
    times = [0.0, 0.1, 0.25, 0.3, 0.7, 1.0, 1.05, 1.5, 1.9]
    path = write_timed_video(tmp_path / "vfr.mp4", times)
    duration = _probe(path)["duration"]
    for snippet in _decode(RESIZE, path):
        plan = plan_snippets(RESIZE, RESIZE.fidelity(snippet.fidelity), duration)
        for slot, target in enumerate(plan.targets[snippet.index]):
            on_screen = max(i for i, t in enumerate(times) if t <= target + 1e-9)
            assert _levels(snippet)[slot] == on_screen, (snippet.fidelity, target)
            assert snippet.frame_times[slot] == pytest.approx(times[on_screen])


def test_nonzero_start_time_counts_from_the_first_frame(tmp_path):
    times = [1.5 + i / 10 for i in range(20)]
    path = write_timed_video(tmp_path / "late.mkv", times)
    row = _probe(path)
    assert row["start_time"] == pytest.approx(1.5)
    assert row["duration"] == pytest.approx(2.0, abs=0.02)
    first = [s for s in _decode(RESIZE, path) if s.fidelity == "full"][0]
    # Spans of 0.5 s, 2 frames each: the first target, 0.125 s after the first frame, shows
    # the frame presented at 1.6 s.
    assert first.start == 0.0 and first.end == pytest.approx(0.5)
    assert _levels(first) == [1, 3]
    assert first.frame_times == pytest.approx([0.1, 0.3])


@pytest.mark.parametrize(
    "rotation, corner", [(0, (0, 0)), (90, (1, 0)), (180, (1, 1)), (-90, (0, 1))]
)
def test_rotation_is_applied(tmp_path, rotation, corner):
    """The stored top-left mark ends where the display matrix puts it upright."""
    path = write_marked_video(tmp_path / "marked.mp4", rotation)
    frame = _decode(RESIZE, path)[0].frames[0]
    half = frame.shape[0] // 2
    quadrants = {
        (r, c): frame[r * half : (r + 1) * half, c * half : (c + 1) * half].mean()
        for r in (0, 1)
        for c in (0, 1)
    }
    assert max(quadrants, key=quadrants.get) == corner


def test_one_pass_equals_separate_passes(tmp_path):
    path = write_video(tmp_path / "v.mp4", seconds=4, fps=12)
    together = _decode(PRESETS["demo"], path)
    for fidelity in PRESETS["demo"].fidelities:
        alone = _decode(PRESETS["demo"], path, (fidelity,))
        mine = [s for s in together if s.fidelity == fidelity.name]
        assert len(alone) == len(mine) == fidelity.snippets
        for a, b in zip(alone, mine, strict=True):
            assert (a.index, a.start, a.end, a.frame_times) == (
                b.index,
                b.start,
                b.end,
                b.frame_times,
            )
            assert a.frames.shape == (fidelity.frames, fidelity.size, fidelity.size, 3)
            assert np.array_equal(a.frames, b.frames)


def test_unreadable_video_is_a_failure(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    with pytest.raises(VideoFailure) as caught:
        list(SnippetDecoder(RESIZE).snippets(str(bad), 0.0, 3.0))
    assert caught.value.reason == "decode_error"


def test_frame_levels_helper_is_consistent():
    assert [frame_level(i) for i in (0, 1, 31, 32)] == [0, 8, 248, 0]


def test_unreferenced_frames_nobody_needs_are_not_decoded(tmp_path, monkeypatch):
    """Skipping disposable H.264 frames changes nothing in the output."""
    import lofipipe.media.decode as decode

    path = write_video(tmp_path / "b.mp4", seconds=6, fps=30)  # x264 defaults: B-frames
    for schedule in (RESIZE, STRIDE, PRESETS["demo"]):
        skipped = []
        original = decode._is_disposable

        def counting(data, size, original=original, skipped=skipped):
            result = original(data, size)
            skipped.append(result)
            return result

        monkeypatch.setattr(decode, "_is_disposable", counting)
        fast = _decode(schedule, path)
        monkeypatch.setattr(decode, "_nal_length_size", lambda stream: None)
        full = _decode(schedule, path)
        monkeypatch.undo()
        assert len(fast) == len(full) > 0
        for a, b in zip(fast, full, strict=True):
            assert (a.fidelity, a.index, a.frame_times) == (b.fidelity, b.index, b.frame_times)
            assert np.array_equal(a.frames, b.frames)
        if schedule is RESIZE:
            assert sum(skipped) > 30  # most of 180 frames are needed by no target


# Preprocessing against an independent float reference --------------------------------------
#
# The reference is what the published pipelines compute: the frame decoded whole to RGB
# (PyAV, rgb24, its own size), turned upright, as float; `torch.nn.functional.interpolate`
# bilinear with align_corners=False and antialias=False (VideoMAE-v2's
# extract_tad_feature.py calls exactly that; MMAction2's cv2 INTER_LINEAR is the same
# two-tap, half-pixel-centre filter); for tsm-test the short side round(S * 256 / 224), the
# long side int(long * scale + 0.5) (mmcv's rescale_size), then a centre crop at
# ((W - S) // 2, (H - S) // 2) (MMAction2's CenterCrop). Measured on this pattern at S =
# 112 (320x240) and 224 (640x360), both sizes and S/2 together: the bilinear presets differ
# only by torch's uint8 rounding, mean 0.24-0.25, max 1.00 level; squash-fast (FFmpeg's
# FAST_BILINEAR, kept for speed, not fidelity) mean 23, max 255 on these hard edges. The
# bounds are (mean, max) with a margin.
BOUND = {
    "squash": (0.4, 1.5),
    "tsm-test": (0.4, 1.5),
    "videomaev2-tad": (0.4, 1.5),
    "squash-fast": (35.0, 256.0),
}


def _write_textured(path, size, rotation=None, frames=2):
    """An H.264 video of a scene-like pattern (a smooth colour ramp, soft stripes, a
    checkerboard of 24 x 16 blocks, a bright bar, a dark right edge that a wrong crop
    loses) that shows where a resize or a crop goes wrong."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(frames):
            red = 127 + 100 * np.sin(x / 9.0 + index)
            green = np.where(((x // 24) + (y // 16)) % 2 == 0, 200, 40)
            blue = 255 * x / width * (y / height)
            image = np.stack([red, green, blue], axis=-1)
            image[height // 4 : height // 4 + 9, width // 3 :] = (250, 250, 10)
            image[:, width - 6 :] = 0
            frame = av.VideoFrame.from_ndarray(image.clip(0, 255).astype(np.uint8), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    """Videos by (width, height, rotation), made once for the tests of this module."""
    folder, made = tmp_path_factory.mktemp("textured"), {}

    def video(width, height, rotation=None):
        if (width, height, rotation) not in made:
            path = folder / f"{width}x{height}r{rotation}.mp4"
            made[width, height, rotation] = (_write_textured(path, (width, height), rotation),)
            made[width, height, rotation] += (
                _reference_frames(path),
                _reference_frames(path, yuv=True),
            )
        return made[width, height, rotation]

    return video


def _reference_frames(path, yuv=False):
    """time -> the upright float frame, decoded whole: RGB as FFmpeg converts it, or with
    `yuv` its Y, U and V planes, chroma upsampled bilinearly to the luma's size."""
    out = {}
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if yuv:
                y, u, v = (
                    torch.from_numpy(
                        np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
                    ).float()
                    for p in frame.planes
                )
                u, v = (
                    functional.interpolate(
                        c[None, None], scale_factor=2, mode="bilinear", align_corners=False
                    )[0, 0, : y.shape[0], : y.shape[1]]
                    for c in (u, v)
                )
                image = torch.stack([y, u, v], -1).numpy()
            else:
                image = frame.to_ndarray(format="rgb24")
            turns = normal_rotation(frame.rotation or 0) // 90
            out[round(float(frame.time), 6)] = torch.from_numpy(
                np.ascontiguousarray(np.rot90(image, turns))
            ).float()
    return out


def _reference(image, preset, size):
    """(S, S, 3) float: the published recipe of `preset` on one upright float frame."""
    height, width = image.shape[:2]
    if PREPROCESS_PRESETS[preset].spatial == "squash":
        resized, top, left = (size, size), 0, 0
    else:
        short = round(size * 256 / 224)
        scale = short / min(height, width)
        resized = (
            (short, int(width * scale + 0.5))
            if height <= width
            else (int(height * scale + 0.5), short)
        )
        top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    out = functional.interpolate(
        image.permute(2, 0, 1)[None],
        size=resized,
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )[0].permute(1, 2, 0)
    return out[top : top + size, left : left + size]


def _compare(video, preset, size):
    """|decoded - reference| of every pixel of every snippet frame at sizes S and S/2."""
    path, reference, _ = video
    schedule = Schedule("p", Fidelity("full", 2, 1, size), (Fidelity("half", 1, 1, size // 2),))
    row = _probe(path)
    decoder = SnippetDecoder(schedule, preprocess=PREPROCESS_PRESETS[preset])
    differences = []
    for snippet in decoder.snippets(str(path), row["start_time"], row["duration"]):
        fidelity = schedule.fidelity(snippet.fidelity)
        for frame, time in zip(snippet.frames, snippet.frame_times, strict=True):
            source = reference[round(time + row["start_time"], 6)]
            assert frame.shape == (fidelity.size, fidelity.size, 3)
            difference = torch.from_numpy(frame).float() - _reference(source, preset, fidelity.size)
            differences.append(difference.abs().flatten())
    return torch.cat(differences)


def _compare_yuv(video, preset, size):
    """|decoded - reference| of luma and of chroma in every snippet frame resized in YUV at
    sizes S, S/2 and S/2 - 1 (odd). The chroma reference is the luma recipe applied to
    chroma upsampled to full size, then averaged over 2 x 2 blocks."""
    path, _, reference = video
    reduced = (Fidelity("half", 1, 1, size // 2), Fidelity("odd", 1, 1, size // 2 - 1))
    schedule = Schedule("p", Fidelity("full", 2, 1, size), reduced)
    row = _probe(path)
    decoder = SnippetDecoder(schedule, preprocess=PREPROCESS_PRESETS[preset], yuv=True)
    luma, chroma = [], []
    for snippet in decoder.snippets(str(path), row["start_time"], row["duration"]):
        size = schedule.fidelity(snippet.fidelity).size
        stored = size + size % 2
        for frame, time in zip(snippet.frames, snippet.frame_times, strict=True):
            assert frame.shape == (stored * 3 // 2, stored)
            expected = _reference(reference[round(time + row["start_time"], 6)], preset, size)
            expected = functional.pad(expected.permute(2, 0, 1)[None], (0, 1, 0, 1), "replicate")
            expected = expected[0, :, :stored, :stored]
            planes = torch.from_numpy(frame.reshape(-1).copy()).float()
            y = planes[: stored * stored].reshape(stored, stored)
            uv = planes[stored * stored :].reshape(2, stored // 2, stored // 2)
            luma.append((y - expected[0]).abs().flatten())
            half = functional.avg_pool2d(expected[1:][None], 2)[0]
            chroma.append((uv - half).abs().flatten())
    return torch.cat(luma), torch.cat(chroma)


@pytest.mark.parametrize("size", [(320, 240), (640, 360)])
@pytest.mark.parametrize("preset", ["squash", "tsm-test", "videomaev2-tad", "squash-fast"])
def test_preprocessing_matches_the_float_reference(textured, preset, size):
    difference = _compare(textured(*size), preset, 224 if size[0] > 320 else 112)
    mean, worst = float(difference.mean()), float(difference.max())
    print(f"{preset} {size[0]}x{size[1]}: mean {mean:.3f}, max {worst:.2f} levels")
    assert mean < BOUND[preset][0] and worst < BOUND[preset][1], (preset, size, mean, worst)


@pytest.mark.parametrize(
    "preset, rotation",
    [("tsm-test", 90), ("tsm-test", -90), ("tsm-test", 180), ("squash", 90), ("squash-fast", 90)],
)
def test_rotated_frames_are_resized_and_cropped_upright(textured, preset, rotation):
    """The crop is taken in upright coordinates: a 320x240 video shown 240x320 keeps its
    full upright width and loses rows at top and bottom."""
    difference = _compare(textured(320, 240, rotation), preset, 112)
    mean, worst = float(difference.mean()), float(difference.max())
    assert mean < BOUND[preset][0] and worst < BOUND[preset][1], (preset, rotation, mean, worst)


# Resized in YUV 4:2:0 (the h264 encoding's path): luma exactly as each RGB channel is
# resized (measured: mean 0.22, max 1 level); chroma by the same mapping at half
# resolution, which without anti-aliasing samples other source pixels than averaging the
# full-size result does, at this pattern's hard colour edges (measured: mean 2.3 to 4.4
# levels; a U/V swap or a shift by one chroma sample gives several times that).
YUV_BOUND = {"squash": (0.5, 1.0, 5.0), "tsm-test": (0.5, 1.0, 5.0)}


@pytest.mark.parametrize(
    "size, rotation", [((320, 240), None), ((640, 360), None), ((320, 240), 90), ((320, 240), 180)]
)
@pytest.mark.parametrize("preset", sorted(YUV_BOUND))
def test_yuv_resizing_matches_the_float_reference(textured, preset, size, rotation):
    luma, chroma = _compare_yuv(textured(*size, rotation), preset, 112 if size[0] <= 320 else 224)
    print(
        f"yuv {preset} {size} {rotation}: luma mean {luma.mean():.3f} max {luma.max():.2f}, "
        f"chroma mean {chroma.mean():.3f} max {chroma.max():.2f}"
    )
    mean, worst, chroma_mean = YUV_BOUND[preset]
    assert luma.mean() < mean and luma.max() <= worst and chroma.mean() < chroma_mean
