import json

import pytest

from lofipipe.data.annotation_files import (
    normalize,
    parse_activitynet,
    parse_thumos,
    read_annotations,
)
from lofipipe.errors import InputError


def _anet(database):
    return json.dumps({"version": "VERSION 1.3", "database": database})


GOOD = {
    "v1": {
        "subset": "training",
        "duration": 10.0,
        "annotations": [
            {"segment": [1.0, 2.5], "label": "jump"},
            {"segment": [4, 6], "label": "run"},
        ],
    },
    "v2": {
        "subset": "validation",
        "duration": 8.0,
        "annotations": [
            {"segment": [7.5, 9.0], "label": "jump"},  # reaches past the end
            {"segment": [3.0, 2.0], "label": "run"},  # reversed
            {"segment": [8.5, 9.5], "label": "run"},
        ],
    },  # outside entirely
    "ghost": {
        "subset": "training",
        "duration": 5.0,
        "annotations": [{"segment": [1, 2], "label": "jump"}],
    },
    "v3": {"subset": "testing", "duration": 4.0},
}


def test_activitynet_normalized_against_the_videos():
    raw = parse_activitynet(_anet(GOOD), "anet.json")
    result = normalize(raw, {"v1": 10.0, "v2": 8.0, "v_v3": 4.0, "unannotated": 3.0})
    segments = [(r["video_id"], r["label"], r["start"], r["end"]) for r in result.rows]
    assert segments == [("v1", "jump", 1.0, 2.5), ("v1", "run", 4.0, 6.0), ("v2", "jump", 7.5, 8.0)]
    assert [r["label_id"] for r in result.rows] == [0, 1, 0]
    assert result.subsets == {"v1": "training", "v2": "validation", "v_v3": "testing"}
    reasons = sorted(issue["reason"] for issue in result.issues)
    assert reasons == ["clipped_segment", "outside_video", "reversed_segment", "unknown_video"]
    messages = " | ".join(issue["error"] for issue in result.issues)
    assert "'ghost', which is not among the listed videos" in messages
    assert "anet.json: database['v2'].annotations[1]: segment [3, 2] ends before" in messages
    assert "clipped to [7.5, 8]" in messages


def test_failed_video_falls_back_to_annotated_duration():
    raw = parse_activitynet(_anet(GOOD), "anet.json")
    result = normalize(raw, {"v1": None, "v2": None})
    assert ("v2", 8.0) in {(r["video_id"], r["end"]) for r in result.rows}


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", r"anet.json: not valid JSON \(line 1"),
        ("[]", "expected an object with a 'database'"),
        (_anet({"v1": []}), r"database\['v1'\]: expected an object"),
        (_anet({"v1": {"annotations": {}}}), r"database\['v1'\].annotations: expected a list"),
        (
            _anet({"v1": {"annotations": [{"segment": [1], "label": "a"}]}}),
            r"annotations\[0\].segment: expected \[start, end\]",
        ),
        (
            _anet({"v1": {"annotations": [{"segment": ["a", 2], "label": "a"}]}}),
            r"start must be a finite number, got 'a'",
        ),
        (
            _anet({"v1": {"annotations": [{"segment": [1, 2], "label": ""}]}}),
            r"annotations\[0\].label: expected a non-empty string",
        ),
        (_anet({"v1": {"duration": "long"}}), r"database\['v1'\].duration: duration must be"),
    ],
)
def test_malformed_activitynet_is_a_clear_error(text, message):
    with pytest.raises(InputError, match=message):
        parse_activitynet(text, "anet.json")


def test_thumos_files():
    raw = parse_thumos(
        [
            (
                "BaseballPitch_val.txt",
                "video_validation_0000051 67.5 75.9\n\nvideo_validation_0000052  1.0 2.0 \n",
            ),
            ("Ambiguous_val.txt", "video_validation_0000051 10.0 12.0\n"),
            ("CliffDiving_test.txt", "video_test_0000004 0.2 1.1\n"),
        ]
    )
    assert raw.source_format == "thumos14"
    assert {(s.key, s.label, s.start, s.end) for s in raw.segments} == {
        ("video_validation_0000051", "BaseballPitch", 67.5, 75.9),
        ("video_validation_0000052", "BaseballPitch", 1.0, 2.0),
        ("video_test_0000004", "CliffDiving", 0.2, 1.1),
    }
    assert raw.videos["video_test_0000004"].subset == "test"
    assert raw.videos["video_validation_0000051"].subset == "validation"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("Pitch.txt", "", "expected a THUMOS-14 file named"),
        ("Pitch_val.txt", "v1 1.0\n", r"Pitch_val.txt line 1: expected '<video> <start> <end>'"),
        ("Pitch_val.txt", "v1 1.0 2.0\nv2 a b\n", r"line 2: expected"),
        ("Pitch_val.txt", "v1 1.0 2.0 extra\n", r"line 1: expected"),
    ],
)
def test_malformed_thumos_is_a_clear_error(name, text, message):
    with pytest.raises(InputError, match=message):
        parse_thumos([(name, text)])


def test_read_from_storage(tmp_path):
    (tmp_path / "anet.json").write_text(_anet(GOOD))
    assert read_annotations(str(tmp_path / "anet.json"), {}).source_format == "activitynet"
    folder = tmp_path / "thumos"
    folder.mkdir()
    (folder / "Jump_val.txt").write_text("a 1 2\n")
    (folder / "Run_val.txt").write_text("b 1 2\n")
    assert len(read_annotations(str(folder), {}).segments) == 2
    assert len(read_annotations(str(folder / "Jump_*.txt"), {}).segments) == 1
    with pytest.raises(InputError, match="annotation file not found"):
        read_annotations(str(tmp_path / "missing.json"), {})
    with pytest.raises(InputError, match="no annotations at"):
        read_annotations(str(tmp_path / "empty"), {})
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="bin.json: not UTF-8"):
        read_annotations(str(tmp_path / "bin.json"), {})
