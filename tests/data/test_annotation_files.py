"""Annotation files as datasets and TAL codebases publish them: ActivityNet-1.3 JSON,
ActionFormer's and OpenTAD's JSON, THUMOS-14 per-class text files."""

import json

import pytest

from lofipipe.data.annotation_files import (
    RawVideo,
    canonical_subset,
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
    assert result.subsets == {"v1": "training", "v2": "validation", "v_v3": "test"}
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
    assert raw.format == "THUMOS-14 per-class text files (3 files)"
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
    raw = read_annotations(str(tmp_path / "anet.json"), {})
    assert (raw.source_format, raw.format) == ("activitynet", "ActivityNet-1.3 JSON (anet.json)")
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


def test_subset_names_are_made_consistent():
    pairs = [("train", "training"), ("Training", "training"), ("val", "validation")]
    pairs += [("Validation", "validation"), ("test", "test"), ("Testing", "test")]
    assert [canonical_subset(name) for name, _ in pairs] == [kept for _, kept in pairs]
    assert canonical_subset(" holdout ") == "holdout"


def test_activitynet_numbers_written_as_text():
    # A THUMOS-14 ground truth in ActivityNet's layout as public TAL repositories ship it:
    # numbers as JSON strings, which the official ActivityNet evaluation code reads.
    text = json.dumps(
        {
            "version": "THUMOS14",
            "database": {
                "video_test_0000004": {
                    "subset": "test",
                    "duration": "33.4",
                    "annotations": [
                        {"segment": ["18.6", "24.8"], "label": "Diving"},
                        {"segment": [" 0.2", "1.1 "], "label": "CliffDiving"},
                        {"segment": ["20.0", "22.0"], "label": "Ambiguous"},
                    ],
                },
            },
        }
    )
    raw = parse_activitynet(text, "thumos14_gt.json")
    assert raw.format == "ActivityNet-style JSON (thumos14_gt.json)"
    assert raw.videos == {"video_test_0000004": RawVideo("test", 33.4)}
    assert [(s.label, s.start, s.end) for s in raw.segments] == [
        ("Diving", 18.6, 24.8),
        ("CliffDiving", 0.2, 1.1),
    ]  # THUMOS-14's Ambiguous spans are no action, in JSON as in the text files
    with pytest.raises(
        InputError, match=r"annotations\[0\].segment: start must be a finite number"
    ):
        parse_activitynet(text.replace('"18.6"', '"nan"'), "thumos14_gt.json")


# ActionFormer's thumos14.json (happyharrycn/actionformer_release, data/thumos/annotations,
# read by libs/datasets/thumos14.py): "version", and per video "subset" (Validation, Test),
# "duration", "fps" and annotations with "label", "segment", "segment(frames)", "label_id".
ACTIONFORMER_THUMOS = {
    "version": "Thumos14-30fps",
    "database": {
        "video_validation_0000051": {
            "subset": "Validation",
            "duration": 169.79,
            "fps": 30.0,
            "annotations": [
                {
                    "label": "BaseballPitch",
                    "segment": [67.5, 75.9],
                    "segment(frames)": [2025.0, 2277.0],
                    "label_id": 0,
                }
            ],
        },
        "video_test_0000004": {
            "subset": "Test",
            "duration": 33.4,
            "fps": 30.0,
            "annotations": [
                {
                    "label": "CliffDiving",
                    "segment": [0.2, 1.1],
                    "segment(frames)": [6.0, 33.0],
                    "label_id": 4,
                },
                {
                    "label": "Diving",
                    "segment": [0.2, 1.1],
                    "segment(frames)": [6.0, 33.0],
                    "label_id": 7,
                },
            ],
        },
        "video_test_0000007": {"subset": "Test", "duration": 50.0, "fps": 30.0, "annotations": []},
    },
}


def test_actionformer_json():
    raw = parse_activitynet(json.dumps(ACTIONFORMER_THUMOS), "thumos14.json")
    assert (raw.source_format, raw.format) == ("actionformer", "ActionFormer JSON (thumos14.json)")
    assert raw.label_ids == {0: "BaseballPitch", 4: "CliffDiving", 7: "Diving"}
    assert {key: video.subset for key, video in raw.videos.items()} == {
        "video_validation_0000051": "validation",  # as the THUMOS-14 val text files say
        "video_test_0000004": "test",
        "video_test_0000007": "test",
    }
    rows = normalize(raw, {"video_test_0000004": 33.4, "video_validation_0000051": None}).rows
    assert [(r["video_id"], r["label"], r["subset"], r["source_format"]) for r in rows] == [
        ("video_test_0000004", "CliffDiving", "test", "actionformer"),
        ("video_test_0000004", "Diving", "test", "actionformer"),
        ("video_validation_0000051", "BaseballPitch", "validation", "actionformer"),
    ]


@pytest.mark.parametrize(
    "label_id, message",
    [
        (
            "seven",
            r"database\['video_test_0000004'\].annotations\[1\].label_id: expected an integer",
        ),
        (4, r"annotations\[1\].label_id: 4 names 'Diving' here and 'CliffDiving' at thumos14.json"),
    ],
)
def test_malformed_actionformer_label_ids(label_id, message):
    document = json.loads(json.dumps(ACTIONFORMER_THUMOS))
    document["database"]["video_test_0000004"]["annotations"][1]["label_id"] = label_id
    with pytest.raises(InputError, match=message) as error:
        parse_activitynet(json.dumps(document), "thumos14.json")
    assert "\n" not in str(error.value)


def test_opentad_json():
    # OpenTAD's thumos_14_anno.json (sming256/OpenTAD, tools/prepare_data/thumos; read by
    # opentad/datasets/thumos.py): "duration" and "frame" per video, Ambiguous spans kept as
    # a label, and the THUMOS-14 val and test videos named "training" and "validation"
    # (configs/_base_/datasets/thumos-14: subset_name="training" / "validation").
    thumos = {
        "database": {
            "video_validation_0000051": {
                "duration": 169.79,
                "frame": 5094,
                "subset": "training",
                "annotations": [{"label": "BaseballPitch", "segment": [67.5, 75.9]}],
            },
            "video_test_0000004": {
                "duration": 33.4,
                "frame": 1002,
                "subset": "validation",
                "annotations": [
                    {"label": "Ambiguous", "segment": [3.0, 4.0]},
                    {"label": "Diving", "segment": [18.6, 24.8]},
                ],
            },
        }
    }
    raw = parse_activitynet(json.dumps(thumos), "thumos_14_anno.json")
    assert (raw.source_format, raw.format) == ("opentad", "OpenTAD JSON (thumos_14_anno.json)")
    assert [s.label for s in raw.segments] == ["BaseballPitch", "Diving"]
    # OpenTAD's EPIC-Kitchens-100 files (tools/prepare_data/epic/convert_epic_kitchens_anno.py):
    # subsets train / val / test, label "id_NNN" with its "label_name".
    epic = {
        "version": "epic-kitchens-100-verb",
        "database": {
            "P01_11": {
                "subset": "train",
                "duration": 213.0,
                "annotations": [{"segment": [0.7, 3.64], "label": "id_003", "label_name": "wash"}],
            },
            "P01_12": {"subset": "val", "duration": 100.0, "annotations": []},
            "P01_13": {"subset": "test", "duration": 80.0},
        },
    }
    raw = parse_activitynet(json.dumps(epic), "epic_kitchens_verb.json")
    assert raw.format == "OpenTAD JSON (epic_kitchens_verb.json)"
    assert [video.subset for video in raw.videos.values()] == ["training", "validation", "test"]
    assert [(s.key, s.label) for s in raw.segments] == [("P01_11", "id_003")]


def test_activitynet_1_3_with_everything_it_carries():
    # activity_net.v1-3.min.json (activity-net.org): version, taxonomy, and per video url,
    # resolution, subset, duration and annotations.
    document = {
        "version": "VERSION 1.3",
        "taxonomy": [{"nodeId": 1, "nodeName": "Long jump", "parentId": 0, "parentName": "Root"}],
        "database": {
            "-0kX2g1yCgs": {
                "duration": 93.67,
                "subset": "validation",
                "resolution": "640x360",
                "url": "https://www.youtube.com/watch?v=-0kX2g1yCgs",
                "annotations": [{"segment": [11.2, 20.5], "label": "Long jump"}],
            },
            "0fw_EJBqnO8": {"duration": 30.1, "subset": "testing", "url": "u", "annotations": []},
        },
    }
    raw = parse_activitynet(json.dumps(document), "activity_net.v1-3.min.json")
    assert raw.format == "ActivityNet-1.3 JSON (activity_net.v1-3.min.json)"
    assert raw.labels == {"Long jump"} and raw.label_ids == {}
    assert raw.videos["0fw_EJBqnO8"].subset == "test"
