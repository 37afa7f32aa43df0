"""ActivityNet-style detection mAP against hand-worked cases, and `lofipipe eval` on the
published file formats."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from support.cli import run

from lofipipe.cli import main
from lofipipe.evaluation.baseline import class_prior_baseline
from lofipipe.evaluation.detection import (
    ANET_TIOU,
    Segment,
    evaluate,
    interpolated_ap,
    parse_thresholds,
)

GT = [Segment("a", "jump", 0, 10), Segment("a", "run", 20, 30), Segment("b", "jump", 5, 15)]


def _pred(video, label, start, end, score):
    return Segment(video, label, start, end, score)


def test_perfect_predictions_score_one():
    predictions = [_pred(s.video_id, s.label, s.start, s.end, 0.9) for s in GT]
    result = evaluate(GT, predictions)
    assert np.allclose(result.mAP, 1.0) and result.average_mAP == 1.0
    assert set(result.per_class) == {"jump", "run"}


def test_a_duplicate_detection_is_a_false_positive():
    truth = [Segment("a", "jump", 0, 10), Segment("a", "jump", 20, 30)]
    predictions = [
        _pred("a", "jump", 0, 10, 0.9),
        _pred("a", "jump", 0, 10, 0.8),
        _pred("a", "jump", 20, 30, 0.7),
    ]
    # tp, fp, tp: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> 1/2 * 1 + 1/2 * 2/3
    assert evaluate(truth, predictions, [0.5]).average_mAP == pytest.approx(5 / 6)


def test_interpolated_precision_takes_the_best_to_the_right():
    # tp, fp, tp, tp over 4 segments: the fp's precision 1/2 is lifted to the 3/4 after it
    precision = np.array([1, 1 / 2, 2 / 3, 3 / 4])
    recall = np.array([1, 1, 2, 3]) / 4
    assert interpolated_ap(precision, recall) == pytest.approx(0.25 * 1 + 0.5 * 3 / 4)


def test_a_class_absent_from_the_ground_truth_changes_nothing():
    predictions = [_pred(s.video_id, s.label, s.start, s.end, 0.5) for s in GT]
    result = evaluate(GT, [_pred("a", "swim", 0, 10, 1.0), *predictions])
    assert result.average_mAP == 1.0 and result.ignored == 1
    assert "swim" not in result.per_class


def test_ties_keep_the_protocols_order():
    truth = [Segment("a", "jump", 0, 10)]
    miss, hit = _pred("a", "jump", 50, 60, 0.5), _pred("a", "jump", 0, 10, 0.5)
    # The official code ranks by numpy's argsort reversed: of equal scores, the one
    # listed later comes first.
    assert evaluate(truth, [miss, hit], [0.5]).average_mAP == 1.0
    assert evaluate(truth, [hit, miss], [0.5]).average_mAP == 0.5


def test_empty_predictions_and_a_video_without_predictions():
    assert evaluate(GT, []).average_mAP == 0.0
    truth = [Segment("a", "jump", 0, 10), Segment("b", "jump", 0, 10)]
    result = evaluate(truth, [_pred("a", "jump", 0, 10, 0.9)], [0.5])
    assert result.average_mAP == pytest.approx(0.5)  # recall stops at 1/2
    # A prediction for a video the ground truth does not have is a false positive.
    result = evaluate(
        truth[:1], [_pred("z", "jump", 0, 10, 0.9), _pred("a", "jump", 0, 10, 0.8)], [0.5]
    )
    assert result.average_mAP == pytest.approx(0.5)


def test_tiou_exactly_at_a_threshold_counts():
    truth = [Segment("a", "jump", 0, 10)]
    result = evaluate(truth, [_pred("a", "jump", 0, 7.5, 0.9)])  # tIoU 0.75
    expected = [1.0 if t <= 0.75 else 0.0 for t in ANET_TIOU]
    assert np.array_equal(result.per_class["jump"], expected)
    assert result.average_mAP == pytest.approx(0.6)


def test_thresholds_are_the_official_codes_own():
    # tIoU 14.4 / 16 computes to 0.8999999999999999: at or above ActivityNet's 0.9 (as
    # np.linspace makes it), so a hit there; a rounded 0.9 would make it a miss.
    truth = [Segment("a", "jump", 41.0, 57.0)]
    result = evaluate(
        truth, [_pred("a", "jump", 41.0, 55.4, 0.9)], parse_thresholds("0.5:0.95:0.05")
    )
    assert list(result.per_class["jump"]) == [1.0] * 9 + [0.0]
    assert result.average_mAP == pytest.approx(0.9)


def test_threshold_ranges():
    assert parse_thresholds("0.5:0.95:0.05") == ANET_TIOU
    assert len(ANET_TIOU) == 10 and ANET_TIOU[5] == 0.75
    assert parse_thresholds("0.3:0.7:0.1") == tuple(np.linspace(0.3, 0.7, 5))
    assert parse_thresholds("0.5") == (0.5,)
    with pytest.raises(Exception, match="tIoU thresholds"):
        parse_thresholds("0.5:0.1:0.1")


def _activitynet_files(tmp_path):
    database = {
        "vid1": {
            "subset": "validation",
            "duration": 60.0,
            "annotations": [
                {"segment": [5.0, 15.0], "label": "Jumping"},
                {"segment": [30.0, 40.0], "label": "Running"},
            ],
        },
        "vid2": {
            "subset": "validation",
            "duration": 30.0,
            "annotations": [{"segment": [0.0, 10.0], "label": "Jumping"}],
        },
        "vid3": {
            "subset": "training",
            "duration": 30.0,
            "annotations": [{"segment": [0.0, 10.0], "label": "Swimming"}],
        },
    }
    (tmp_path / "gt.json").write_text(json.dumps({"version": "VERSION 1.3", "database": database}))
    results = {  # keyed by file name, with ActivityNet's v_ prefix
        "v_vid1": [
            {"segment": [5.0, 15.0], "label": "Jumping", "score": 0.9},
            {"segment": [30.0, 35.0], "label": "Running", "score": 0.8},
        ],
        "v_vid2": [{"segment": [0.0, 10.0], "label": "Jumping", "score": 0.7}],
    }
    (tmp_path / "pred.json").write_text(
        json.dumps({"version": "VERSION 1.3", "results": results, "external_data": {}})
    )


def test_eval_command_on_activitynet_files(tmp_path):
    _activitynet_files(tmp_path)
    output = run(
        "eval",
        "--gt",
        tmp_path / "gt.json",
        "--pred",
        tmp_path / "pred.json",
        "--subset",
        "validation",
        "--format",
        "json",
    )
    report = json.loads(output)
    assert list(report["mAP"]) == [f"{t:.2f}" for t in ANET_TIOU]
    # Jumping is perfect; Running's prediction has tIoU 0.5: AP 1 at 0.50 only.
    assert report["mAP"]["0.50"] == 1.0 and report["mAP"]["0.55"] == 0.5
    assert report["per_class"]["Running"]["average_AP"] == pytest.approx(0.1)
    assert report["average_mAP"] == pytest.approx((1.0 + 0.1) / 2)
    table = run(
        "eval",
        "--gt",
        tmp_path / "gt.json",
        "--pred",
        tmp_path / "pred.json",
        "--subset",
        "validation",
        "--per-class",
    )
    assert "2 videos, 3 ground-truth segments of 2 classes, 3 predictions" in table
    assert "   avg   55.00" in table and "Running   10.00" in table


def test_eval_command_on_thumos_files(tmp_path):
    folder = tmp_path / "annotations"
    folder.mkdir()
    (folder / "BaseballPitch_test.txt").write_text(
        "video_test_0000004 10.0 20.0\nvideo_test_0000004 40.0 50.0\n"
    )
    (folder / "Ambiguous_test.txt").write_text("video_test_0000004 60.0 70.0\n")
    (tmp_path / "pred.json").write_text(
        json.dumps(
            {
                "results": {
                    "video_test_0000004": [
                        {"segment": [10.0, 20.0], "label": "BaseballPitch", "score": 0.9},
                        {"segment": [62.0, 70.0], "label": "BaseballPitch", "score": 0.95},
                    ]
                }
            }
        )
    )
    report = json.loads(
        run(
            "eval",
            "--gt",
            folder,
            "--pred",
            tmp_path / "pred.json",
            "--subset",
            "test",
            "--tiou",
            "0.3:0.7:0.1",
            "--format",
            "json",
        )
    )
    assert list(report["mAP"]) == ["0.30", "0.40", "0.50", "0.60", "0.70"]
    # fp (ambiguous spans are not ground truth), then tp: precision 1/2 at recall 1/2
    assert report["average_mAP"] == pytest.approx(0.25)


def test_eval_errors_are_one_line(tmp_path):
    _activitynet_files(tmp_path)
    (tmp_path / "bad.json").write_text('{"results": {"v": [{"segment": [1], "score": 1}]}}')
    for args, message in [
        (["--pred", tmp_path / "bad.json"], "bad.json: results['v'][0]: expected"),
        (["--pred", tmp_path / "none.json"], "predictions not found"),
        (
            ["--pred", tmp_path / "pred.json", "--subset", "testing"],
            "no videos of subset 'testing' (subsets there: training, validation)",
        ),
        (["--pred", tmp_path / "pred.json", "--tiou", "0:2:x"], "tIoU thresholds"),
    ]:
        result = CliRunner().invoke(
            main, ["eval", "--gt", str(tmp_path / "gt.json"), *map(str, args)]
        )
        assert result.exit_code != 0 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_class_prior_baseline():
    training = [Segment("t1", "A", 0, 2), Segment("t1", "A", 5, 9), Segment("t2", "B", 1, 2)]
    found = class_prior_baseline(training, {"v": (0.0, 6.0)})
    by_class = {
        label: [(s.start, s.end, s.score) for s in found if s.label == label]
        for label in ("A", "B")
    }
    assert by_class["A"] == [(0.0, 3.0, 2 / 3), (1.5, 4.5, 2 / 3), (3.0, 6.0, 2 / 3)]
    assert len(by_class["B"]) == 11 and by_class["B"][-1] == (5.0, 6.0, 1 / 3)
