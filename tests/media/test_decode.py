"""The decode stage in-process: snippet counts, times, frame choice, single pass."""

import numpy as np
import pytest
from support.media import frame_level, write_marked_video, write_timed_video, write_video

from lofipipe.errors import VideoFailure
from lofipipe.media.decode import SnippetDecoder, plan_snippets
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
