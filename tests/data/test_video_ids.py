import pytest
from support.reliability import record

from lofipipe.data.video_ids import (
    annotation_key_to_video_id,
    video_id_for_file,
    video_id_from_stem,
)


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd.mp4",
        "..mp4",
        ".hidden.mp4",
        "a b.mp4",
        "vidéo ünïcode.mkv",
        "$(rm -rf ~);.mp4",
        "x" * 300 + ".mp4",
        "back\\slash.mp4",
        "null\x00byte.mp4",
        "\u202eevil.mp4",
        "CON.mp4",
        "-starts-with-dash.mp4",
    ],
)
@pytest.mark.reliability
def test_ids_are_safe_path_components(name):
    video_id = video_id_for_file(name)
    assert video_id and video_id not in {".", ".."}
    assert not video_id.startswith(".")
    assert "/" not in video_id and "\\" not in video_id and "\x00" not in video_id
    assert len(video_id) <= 140
    assert video_id.isascii() and video_id.isprintable()
    record(
        "input",
        f"file name {name[:40]!r}",
        f"video id `{video_id[:60]}`: a safe path component",
        "test_video_ids",
    )


def test_plain_names_are_kept_and_different_names_never_collide():
    assert video_id_for_file("s3://bucket/videos/v_abc-123.mp4") == "v_abc-123"
    assert video_id_for_file("/x/video_validation_0000051.mp4") == "video_validation_0000051"
    assert video_id_for_file("a b.mp4") != video_id_for_file("a_b.mp4")
    assert video_id_for_file("x" * 300 + "1.mp4") != video_id_for_file("x" * 300 + "2.mp4")
    assert video_id_for_file("../../etc/passwd.mp4") == "passwd"


def test_annotation_keys_match_file_ids():
    known = {video_id_for_file(n) for n in ["v_-0_5x0v7YfI.mp4", "a b.mp4", "plain.mp4"]}
    assert annotation_key_to_video_id("-0_5x0v7YfI", known) == "v_-0_5x0v7YfI"
    assert annotation_key_to_video_id("a b", known) == video_id_from_stem("a b")
    assert annotation_key_to_video_id("plain", known) == "plain"
    assert annotation_key_to_video_id("missing", known) is None
