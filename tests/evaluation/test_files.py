"""Ground truth and predictions read as THUMOS-14 and the TAL codebases publish them: every
layout of the same segments scores the same mAP, and every format is named."""

import json
import os
import pickle

import numpy as np
import pytest
from support.cli import run

from lofipipe.errors import InputError
from lofipipe.evaluation.detection import THUMOS_TIOU, Segment, evaluate
from lofipipe.evaluation.files import (
    Prediction,
    match_predictions,
    read_ground_truth,
    read_predictions,
)

# THUMOS-14 test videos: (video, label, start, end). CliffDiving is also Diving, as in the
# dataset; video_test_0000007 has only an Ambiguous span.
TRUTH = [
    ("video_test_0000004", "CliffDiving", "0.2", "1.1"),
    ("video_test_0000004", "Diving", "0.2", "1.1"),
    ("video_test_0000004", "Diving", "18.6", "24.8"),
    ("video_test_0000006", "BaseballPitch", "10.0", "12.5"),
    ("video_test_0000006", "BaseballPitch", "40.3", "44.0"),
]
AMBIGUOUS = [("video_test_0000006", "20.0", "22.0"), ("video_test_0000007", "3.0", "4.0")]
DURATIONS = {"video_test_0000004": "33.4", "video_test_0000006": "180.5"}
DURATIONS["video_test_0000007"] = "50.0"
VALIDATION = ("video_validation_0000051", "BaseballPitch", "67.5", "75.9")
# ActionFormer's label ids for these classes in its thumos14.json
ACTIONFORMER_IDS = {"BaseballPitch": 0, "CliffDiving": 4, "Diving": 7}

# (video, label, start, end, score), with values exact in float32 as ActionFormer's arrays
# hold them. One hits an Ambiguous span, one a video without ground truth, one a class
# the ground truth does not have (HammerThrow, ActionFormer id 9).
PREDICTED = [
    ("video_test_0000004", "Diving", 18.5, 24.75, 0.875),
    ("video_test_0000004", "CliffDiving", 0.25, 1.0, 0.75),
    ("video_test_0000004", "Diving", 0.0, 1.5, 0.375),
    ("video_test_0000004", "HammerThrow", 1.0, 2.0, 0.4375),
    ("video_test_0000006", "BaseballPitch", 20.0, 22.0, 0.9375),
    ("video_test_0000006", "BaseballPitch", 10.25, 12.5, 0.625),
    ("video_test_0000006", "BaseballPitch", 38.0, 41.0, 0.5),
    ("video_test_0000099", "Diving", 1.0, 2.0, 0.5625),
]
LABEL_IDS = {**ACTIONFORMER_IDS, "HammerThrow": 9}


def _annotation(label, start, end, **more):
    return {"segment": [start, end], "label": label, **more}


def _write_ground_truth(folder):
    """The same THUMOS-14 segments in each published layout; returns {file: subset}."""
    folder.mkdir()
    # ActivityNet's layout as public TAL repositories ship THUMOS-14: numbers as text.
    database = {
        video: {
            "subset": "test",
            "duration": duration,
            "annotations": [_annotation(lab, a, b) for v, lab, a, b in TRUTH if v == video]
            + [_annotation("Ambiguous", a, b) for v, a, b in AMBIGUOUS if v == video],
        }
        for video, duration in DURATIONS.items()
    }
    video, label, start, end = VALIDATION
    database[video] = {"subset": "validation", "annotations": [_annotation(label, start, end)]}
    (folder / "thumos14_strings.json").write_text(json.dumps({"database": database}))

    # The official ActivityNet-1.3 layout (activity_net.v1-3.min.json) with JSON numbers.
    database = {
        video: {
            "subset": "testing",
            "duration": float(duration),
            "resolution": "320x180",
            "url": f"https://www.crcv.ucf.edu/THUMOS14/{video}.mp4",
            "annotations": [
                _annotation(lab, float(a), float(b)) for v, lab, a, b in TRUTH if v == video
            ],
        }
        for video, duration in DURATIONS.items()
    }
    taxonomy = [
        {"nodeId": i, "nodeName": name, "parentId": 0, "parentName": "Root"}
        for i, name in enumerate(ACTIONFORMER_IDS, start=1)
    ]
    (folder / "activitynet.json").write_text(
        json.dumps({"version": "VERSION 1.3", "taxonomy": taxonomy, "database": database})
    )

    # ActionFormer's thumos14.json (libs/datasets/thumos14.py reads it): Validation / Test,
    # fps, segment(frames) and label_id; its 20 classes leave Ambiguous out.
    database = {
        video: {
            "subset": "Test",
            "duration": float(duration),
            "fps": 30.0,
            "annotations": [
                {
                    "label": lab,
                    "segment": [float(a), float(b)],
                    "segment(frames)": [float(a) * 30, float(b) * 30],
                    "label_id": ACTIONFORMER_IDS[lab],
                }
                for v, lab, a, b in TRUTH
                if v == video
            ],
        }
        for video, duration in DURATIONS.items()
    }
    (folder / "thumos14.json").write_text(
        json.dumps({"version": "Thumos14-30fps", "database": database})
    )

    # OpenTAD's thumos_14_anno.json: duration and frame count, Ambiguous as a label, and the
    # THUMOS-14 test videos in its "validation" subset.
    database = {
        video: {
            "duration": float(duration),
            "frame": round(float(duration) * 30),
            "subset": "validation",
            "annotations": [
                _annotation(lab, float(a), float(b)) for v, lab, a, b in TRUTH if v == video
            ]
            + [_annotation("Ambiguous", float(a), float(b)) for v, a, b in AMBIGUOUS if v == video],
        }
        for video, duration in DURATIONS.items()
    }
    (folder / "thumos_14_anno.json").write_text(json.dumps({"database": database}))

    # THUMOS-14's own per-class files, Ambiguous_test.txt included.
    texts = folder / "annotations"
    texts.mkdir()
    for label in ACTIONFORMER_IDS:
        lines = [f"{v} {a} {b}" for v, lab, a, b in TRUTH if lab == label]
        (texts / f"{label}_test.txt").write_text("\n".join(lines) + "\n")
    (texts / "Ambiguous_test.txt").write_text("".join(f"{v} {a} {b}\n" for v, a, b in AMBIGUOUS))
    (texts / "BaseballPitch_val.txt").write_text(" ".join(VALIDATION[:1] + VALIDATION[2:]))
    return {
        "thumos14_strings.json": "test",
        "activitynet.json": "test",
        "thumos14.json": "test",
        "thumos_14_anno.json": "validation",
        "annotations": "test",
    }


def _write_predictions(folder):
    """The same predictions in each format the codebases write."""
    folder.mkdir()
    by_video = {}
    for video, label, start, end, score in PREDICTED:
        by_video.setdefault(video, []).append((label, start, end, score))
    # ActivityNet result JSON with names, numbers as text
    results = {
        video: [
            {"label": lab, "score": str(score), "segment": [str(a), str(b)]}
            for lab, a, b, score in entries
        ]
        for video, entries in by_video.items()
    }
    (folder / "results_names.json").write_text(
        json.dumps({"version": "VERSION 1.3", "results": results, "external_data": {}})
    )
    # ActivityNet result JSON with integer label ids
    results = {
        video: [
            {"label": LABEL_IDS[lab], "score": score, "segment": [a, b]}
            for lab, a, b, score in entries
        ]
        for video, entries in by_video.items()
    }
    (folder / "results_ids.json").write_text(json.dumps({"results": results}))
    # OpenTAD's result_detection.json (opentad/cores/test_engine.py): {"results": ...} only,
    # segments rounded to 2 places and scores to 4
    results = {
        video: [
            {"segment": [round(a, 2), round(b, 2)], "label": lab, "score": round(score, 4)}
            for lab, a, b, score in entries
        ]
        for video, entries in by_video.items()
    }
    (folder / "result_detection.json").write_text(json.dumps({"results": results}))
    # ActionFormer's eval_results.pkl (libs/utils/train_utils.py valid_one_epoch): pickle.dump
    # of parallel arrays; t-start, t-end and score float32, label int64 ids.
    arrays = {
        "video-id": [video for video, *_ in PREDICTED],
        "t-start": np.array([p[2] for p in PREDICTED], np.float32),
        "t-end": np.array([p[3] for p in PREDICTED], np.float32),
        "label": np.array([LABEL_IDS[p[1]] for p in PREDICTED], np.int64),
        "score": np.array([p[4] for p in PREDICTED], np.float32),
    }
    for protocol in (2, 4, 5):
        (folder / f"eval_results_{protocol}.pkl").write_bytes(pickle.dumps(arrays, protocol))
    return {
        "results_names.json": "ActivityNet result JSON",
        "results_ids.json": "ActivityNet result JSON",
        "result_detection.json": "ActivityNet result JSON",
        "eval_results_2.pkl": "ActionFormer results pickle",
        "eval_results_4.pkl": "ActionFormer results pickle",
        "eval_results_5.pkl": "ActionFormer results pickle",
    }


def test_every_layout_of_the_ground_truth_scores_the_same(tmp_path):
    files = _write_ground_truth(tmp_path / "gt")
    predictions = [Segment(*p) for p in PREDICTED]
    expected = evaluate(
        [Segment(v, lab, float(a), float(b)) for v, lab, a, b in TRUTH], predictions, THUMOS_TIOU
    )
    names = {}
    for name, subset in files.items():
        truth = read_ground_truth(str(tmp_path / "gt" / name), {}, subset)
        names[name] = truth.format
        assert truth.videos == set(DURATIONS), name
        result = evaluate(truth.segments, predictions, THUMOS_TIOU)
        assert result.instances == len(TRUTH) and result.ignored == 1, name
        assert result.to_dict() == expected.to_dict(), name
    assert names == {
        "thumos14_strings.json": "ActivityNet-style JSON (thumos14_strings.json)",
        "activitynet.json": "ActivityNet-1.3 JSON (activitynet.json)",
        "thumos14.json": "ActionFormer JSON (thumos14.json)",
        "thumos_14_anno.json": "OpenTAD JSON (thumos_14_anno.json)",
        "annotations": "THUMOS-14 per-class text files (5 files)",
    }
    # BaseballPitch: fp (the Ambiguous span), tp, fp over 2 segments -> 1/2 * 1/2.
    # Diving: tp, fp (a video without ground truth), tp at tIoU 0.6 -> 1/2 + 1/2 * 2/3,
    # and 1/2 at 0.7. CliffDiving: 1.
    assert expected.mAP.tolist() == pytest.approx([25 / 36] * 4 + [7 / 12])


def test_every_prediction_format_reads_the_same(tmp_path):
    _write_ground_truth(tmp_path / "gt")
    formats = _write_predictions(tmp_path / "pred")
    truth = read_ground_truth(str(tmp_path / "gt" / "thumos14.json"), {}, "test")
    assert truth.label_ids == {0: "BaseballPitch", 4: "CliffDiving", 7: "Diving"}
    named = [Segment(*p) for p in PREDICTED]
    # ActionFormer's ids name the ground truth's classes; an id it lacks is a label it lacks
    numbered = [
        Segment(v, "label id 9" if label == "HammerThrow" else label, a, b, score)
        for v, label, a, b, score in PREDICTED
    ]
    for name, kind in formats.items():
        predictions = read_predictions(str(tmp_path / "pred" / name), {})
        assert predictions.format == f"{kind} ({name})"
        matched = match_predictions(predictions, truth)
        if name in ("results_names.json", "result_detection.json"):
            assert matched == named, name
        else:
            assert matched == numbered, name
            assert predictions.segments[0] == Prediction(
                "video_test_0000004", 7, 18.5, 24.75, 0.875
            )
        result = evaluate(truth.segments, matched, THUMOS_TIOU)
        assert result.ignored == 1, name


def test_label_ids_need_ground_truth_that_numbers_its_labels(tmp_path):
    _write_ground_truth(tmp_path / "gt")
    _write_predictions(tmp_path / "pred")
    truth = read_ground_truth(str(tmp_path / "gt" / "annotations"), {}, "test")
    predictions = read_predictions(str(tmp_path / "pred" / "eval_results_4.pkl"), {})
    message = (
        r"ActionFormer results pickle \(eval_results_4.pkl\) gives label ids \(e.g. 7\) "
        r"but THUMOS-14 per-class text files \(5 files\) has no label ids"
    )
    with pytest.raises(InputError, match=message):
        match_predictions(predictions, truth)


def test_subsets_are_found_under_any_spelling(tmp_path):
    _write_ground_truth(tmp_path / "gt")
    for subset in ("test", "Test", "testing"):
        truth = read_ground_truth(str(tmp_path / "gt" / "thumos14.json"), {}, subset)
        assert truth.videos == set(DURATIONS)
    truth = read_ground_truth(str(tmp_path / "gt" / "thumos14_strings.json"), {}, "val")
    assert truth.videos == {"video_validation_0000051"}
    with pytest.raises(InputError, match=r"no videos of subset 'val' \(subsets there: test\)"):
        read_ground_truth(str(tmp_path / "gt" / "thumos14.json"), {}, "val")


def test_eval_command_names_what_it_read(tmp_path):
    _write_ground_truth(tmp_path / "gt")
    _write_predictions(tmp_path / "pred")
    args = ["eval", "--gt", tmp_path / "gt" / "thumos14.json", "--subset", "Test"]
    args += ["--pred", tmp_path / "pred" / "eval_results_4.pkl", "--tiou", "0.3:0.7:0.1"]
    table = run(*args)
    assert "ground truth: ActionFormer JSON (thumos14.json); " in table
    assert "predictions: ActionFormer results pickle (eval_results_4.pkl)" in table
    assert "3 videos, 5 ground-truth segments of 3 classes, 8 predictions" in table
    report = json.loads(run(*args, "--format", "json"))
    assert report["average_mAP"] == pytest.approx((25 / 36 * 4 + 7 / 12) / 5)
    assert report["predictions_format"] == "ActionFormer results pickle (eval_results_4.pkl)"


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickled(value):
    return pickle.dumps(value, 4)


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "bad.json",
            '{"results": {"v": [{"segment": [1, 2], "score": 1}]}}',
            r"bad.json: results\['v'\]\[0\]: no 'label'",
        ),
        (
            "bad.json",
            '{"results": {"v": [{"segment": [1, 2], "label": null, "score": 1}]}}',
            r"results\['v'\]\[0\].label: label must be a name or an integer label id, got None",
        ),
        (
            "bad.json",
            '{"results": {"v": [{"segment": ["a", 2], "label": "x", "score": 1}]}}',
            r"start must be a finite number, got 'a'",
        ),
        ("bad.json", "{nope", r"bad.json: not valid JSON"),
        (
            "bad.pkl",
            b"\x80\x04not a pickle",
            r"bad.pkl: not a readable ActionFormer results pickle",
        ),
        (
            "bad.pkl",
            _pickled([1, 2]),
            r"bad.pkl: expected ActionFormer's results, a dict of 'video-id', 't-start'",
        ),
        (
            "bad.pkl",
            _pickled(
                {
                    "video-id": ["v"],
                    "t-start": np.zeros(2),
                    "t-end": np.ones(2),
                    "label": np.zeros(2, int),
                    "score": np.ones(2),
                }
            ),
            r"bad.pkl: the arrays differ in length",
        ),
        (
            "bad.pkl",
            _pickled(
                {
                    "video-id": ["v"],
                    "t-start": np.zeros(1),
                    "t-end": np.ones(1),
                    "label": np.array([0.5]),
                    "score": np.ones(1),
                }
            ),
            r"bad.pkl: row 0.label: label must be a name or an integer label id, got 0.5",
        ),
    ],
)
def test_malformed_predictions_are_one_clear_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(InputError, match=message) as error:
        read_predictions(str(path), {})
    assert "\n" not in str(error.value)


def test_a_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_RunsAShellCommand(marker)))
    refused = r"evil.pkl: not a readable ActionFormer results pickle \(refused to load \w+.system"
    with pytest.raises(InputError, match=refused):
        read_predictions(str(tmp_path / "evil.pkl"), {})
    assert not marker.exists()
