"""The probe stage in-process, without Ray, on real files."""

import pytest
from support.media import write_audio_only, write_truncated, write_video

from lofipipe.workers.video_prober import VideoItem, VideoProber


def _probe(path):
    return VideoProber().process(VideoItem("v", str(path), path.stat().st_size, "sig"))


def test_good_video_facts(tmp_path):
    row = _probe(write_video(tmp_path / "v.mp4", seconds=3, size=(80, 48), fps=10, audio=True))
    assert row["status"] == "ok" and row["error"] is None
    assert row["duration"] == pytest.approx(3.0)
    assert row["avg_fps"] == pytest.approx(10.0)
    assert row["num_frames"] == 30
    assert (row["width"], row["height"], row["rotation"]) == (80, 48, 0)
    assert row["codec"] == "h264" and row["has_audio"] is True
    assert len(row["fingerprint"]) == 32
    assert _probe(tmp_path / "v.mp4")["fingerprint"] == row["fingerprint"]


@pytest.mark.parametrize("degrees, expected", [(90, 90), (180, 180), (-90, 270)])
def test_rotation_is_read(tmp_path, degrees, expected):
    row = _probe(write_video(tmp_path / "r.mp4", rotation=degrees))
    assert row["status"] == "ok" and row["rotation"] == expected
    assert (row["width"], row["height"]) == (64, 48)  # as stored


def test_mkv_without_frame_count(tmp_path):
    row = _probe(write_video(tmp_path / "v.mkv"))
    assert row["status"] == "ok" and row["num_frames"] is None
    assert row["duration"] == pytest.approx(2.0, abs=0.15)


def test_bad_files_get_one_line_reasons(tmp_path, small_video):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    cases = {
        "empty.mp4": "empty_file: empty file (0 bytes)",
        "text.mp4": "not_a_video: not a readable video container",
        "audio.mp4": "no_video_stream: no video stream (audio only)",
        "truncated.mp4": "not_a_video: not a readable video container",
    }
    write_audio_only(tmp_path / "audio.mp4")
    write_truncated(tmp_path / "truncated.mp4", small_video)
    for name, expected in cases.items():
        row = _probe(tmp_path / name)
        assert row["status"] == "failed", name
        assert row["error"].startswith(expected), (name, row["error"])
        assert "\n" not in row["error"]


def test_truncated_file_with_index_first_is_caught(tmp_path):
    """An MP4 whose moov atom comes first opens fine when cut short; the probe must still
    see that its end is missing."""
    import av

    full = tmp_path / "fast.mp4"
    write_video(full, seconds=10)
    with (
        av.open(str(full)) as source,
        av.open(str(tmp_path / "faststart.mp4"), "w", options={"movflags": "+faststart"}) as out,
    ):
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = (tmp_path / "faststart.mp4").read_bytes()
    assert data[4:8] == b"ftyp" and data.index(b"moov") < data.index(b"mdat")
    cut = data.index(b"mdat") + (len(data) - data.index(b"mdat")) // 2
    (tmp_path / "cut.mp4").write_bytes(data[:cut])
    assert _probe(tmp_path / "faststart.mp4")["status"] == "ok"
    row = _probe(tmp_path / "cut.mp4")
    assert row["status"] == "failed" and row["error"].startswith("truncated: ")


def test_resource_limits_reject_before_decoding(tmp_path, small_video, monkeypatch):
    """8K frames fail on the pixel budget read from the headers, before any decoding; a
    long video on the duration limit; a big file on the size limit. All configurable."""
    import av

    from lofipipe.schemas.config import IngestConfig

    huge = write_video(tmp_path / "8k.mp4", seconds=0.2, size=(7680, 4320), fps=5)
    decoded = []
    original = av.container.InputContainer.decode

    def counting(self, *args, **kwargs):
        decoded.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    row = _probe(huge)
    assert row["status"] == "failed" and not decoded
    assert row["error"] == ("too_many_pixels: 7680x4320 frames, over ingest.max_pixels=9437184")
    roomy = VideoProber(settings=IngestConfig(max_pixels=7680 * 4320))
    assert roomy.process(VideoItem("v", str(huge), huge.stat().st_size, "s"))["status"] == "ok"
    assert decoded  # the same probe decodes once the budget allows

    size = small_video.stat().st_size
    limits = IngestConfig(max_duration_s=1.5, max_file_gb=size / 2e9)
    row = VideoProber(settings=limits).process(VideoItem("v", str(small_video), size, "s"))
    assert row["error"].startswith("too_large_file: ") and "ingest.max_file_gb=" in row["error"]
    limits = IngestConfig(max_duration_s=1.5)
    row = VideoProber(settings=limits).process(VideoItem("v", str(small_video), size, "s"))
    assert row["error"] == "too_long: 0.000556 h, over ingest.max_duration_s=1.5"
