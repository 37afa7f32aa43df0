"""ActivityNet proposal AR@AN and its AUC, and Ego4D moment queries' Recall@kx, against
hand-worked cases, and `lofipipe eval --metric ar|recall`.

The conventions are those of the official code: activitynet/ActivityNet
`Evaluation/eval_proposal.py` and EGO4D/episodic-memory
`MQ/Evaluation/ego4d/get_retrieval_performance.py` (see lofipipe/evaluation/proposals.py).
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from support.cli import run

from lofipipe.cli import main
from lofipipe.errors import ConfigError
from lofipipe.evaluation.detection import ANET_TIOU, Segment
from lofipipe.evaluation.proposals import (
    area_under_curve,
    average_recall,
    parse_multipliers,
    recall_at_kx,
)

# Two videos, three instances. Against ANET_TIOU (0.50, 0.55, ..., 0.95):
TRUTH = [
    Segment("a", "jump", 0, 10),  # a1
    Segment("a", "run", 20, 30),  # a2
    Segment("b", "jump", 0, 10),  # b1
]
PROPOSALS = [
    Segment("a", "jump", 0, 10, 0.9),  # a1 at tIoU 1: covered at all 10 thresholds
    Segment("a", "jump", 20, 26.2, 0.8),  # a2 at 0.62: at 0.50, 0.55, 0.60
    Segment("a", "jump", 50, 60, 0.7),  # nothing
    Segment("b", "swim", 0, 8.3, 0.9),  # b1 at 0.83 (labels play no part): 0.50 ... 0.80
]


def _proposal(video, start, end, score):
    return Segment(video, "", start, end, score)


def test_ar_at_an_hand_worked():
    # N = 2 videos, P = 4 proposals: the budget of 100 per video keeps every proposal
    # (ratio 100 * 2 / 4 = 50), K = 4 kept. At point j a video of k kept proposals takes
    # floor(k * j/100 * 100 * 2 / 4) = floor(k * j / 2): video a (k = 3) 1 at j = 1 and
    # all 3 from j = 2; video b (k = 1) none at j = 1 and its one from j = 2.
    result = average_recall(TRUTH, PROPOSALS)
    assert result.proposals_per_video[:3] == pytest.approx([1, 2, 3])
    assert result.proposals_per_video[-1] == pytest.approx(100)
    # AN 1: a1 only, at every threshold: recall 1/3 everywhere.
    assert result.at(1) == pytest.approx([1 / 3] * 10)
    # AN 2 on: all three at 0.50-0.60, a1 and b1 at 0.65-0.80, a1 alone at 0.85-0.95.
    every = [1.0] * 3 + [2 / 3] * 4 + [1 / 3] * 3
    for an in (2, 5, 10, 100):
        assert result.at(an) == pytest.approx(every)
    # AR = (3 * 1 + 4 * 2/3 + 3 * 1/3) / 10 = 2/3.
    assert result.average_recall[0] == pytest.approx(1 / 3)
    assert result.average_recall[1:] == pytest.approx([2 / 3] * 99)
    # AUC: (1/3 + 2/3) / 2 over AN 1-2, then 2/3 over AN 2-100, over 100.
    assert result.auc == pytest.approx((0.5 + 98 * 2 / 3) / 100)
    assert (result.videos, result.instances, result.proposals) == (2, 3, 4)
    report = result.to_dict()
    assert report["AR"] == pytest.approx({"1": 1 / 3, "5": 2 / 3, "10": 2 / 3, "100": 2 / 3})
    assert report["AUC"] == pytest.approx(0.658333333)
    assert report["recall"]["0.60"]["100"] == 1.0 and report["recall"]["0.95"]["1"] == 1 / 3
    assert "   avg   33.33   66.67   66.67   66.67" in result.table()
    assert "   AUC   65.83" in result.table()


def test_proposals_of_videos_without_ground_truth_share_the_budget():
    # max 2 per video. Without "z": ratio 2 * 2 / 4 = 1 keeps all, K = 4, and at AN 2
    # (j = 100) a takes floor(3 * 100/100 * 2 * 2 / 4) = 3, b takes 1: AR 2/3, as above.
    assert average_recall(TRUTH, PROPOSALS, max_proposals=2).at(2).mean() == pytest.approx(2 / 3)
    # Four proposals of a video without ground truth make P = 8: ratio 2 * 2 / 8 = 1/2,
    # a keeps floor(3 / 2) = 1 (a1's), b keeps floor(1 / 2) = 0. AR at AN 2 is 1/3.
    others = [_proposal("z", 0, 5, 0.1 * i) for i in range(4)]
    result = average_recall(TRUTH, PROPOSALS + others, max_proposals=2)
    assert result.proposals_per_video[[0, -1]] == pytest.approx([0.02, 2])
    assert result.at(2) == pytest.approx([1 / 3] * 10)
    # K = 1: a takes floor(1 * j/100 * 2 * 2 / 1) = floor(j / 25), its one from j = 25.
    assert result.average_recall[23] == 0 and result.average_recall[24] == pytest.approx(1 / 3)


def test_auc_of_constructed_curves():
    an = np.arange(1, 101, dtype=float)
    # The curve starts at AN 1: recall 1 everywhere covers 99 of 100.
    assert area_under_curve(an, np.ones(100)) == pytest.approx(0.99)
    # AR = AN / 100: the trapezoids are exact, (100^2 - 1^2) / 2 / 100 / 100.
    assert area_under_curve(an, an / 100) == pytest.approx(0.49995)
    # A step from 0 to 1 between AN 10 and 11: half a unit, then 89 units.
    assert area_under_curve(an, (an > 10).astype(float)) == pytest.approx(0.895)


def test_ar_edge_cases():
    # Video b without proposals: its instance is never recalled.
    result = average_recall(TRUTH, PROPOSALS[:3])
    assert result.at(100) == pytest.approx([2 / 3] * 3 + [1 / 3] * 7)
    # No proposals, or none on a video with ground truth: zero, not an error.
    for proposals in ([], [_proposal("z", 0, 10, 0.5)]):
        result = average_recall(TRUTH, proposals)
        assert not result.recall.any() and result.auc == 0.0
    # No ground truth: nothing to recall.
    result = average_recall([], PROPOSALS)
    assert result.videos == 0 and not result.recall.any()
    with pytest.raises(ValueError, match="AN 3.5 is not a point"):
        result.at(3.5)


def test_ar_ties_keep_the_official_order():
    # One proposal per video fits (max 1, ratio 1 * 1 / 2): of two equal scores the
    # official numpy argsort, reversed, ranks the one listed later first.
    truth = [Segment("a", "x", 0, 10)]
    miss, hit = _proposal("a", 50, 60, 0.5), _proposal("a", 0, 10, 0.5)
    assert average_recall(truth, [miss, hit], max_proposals=1).at(1).mean() == 1.0
    assert average_recall(truth, [hit, miss], max_proposals=1).at(1).mean() == 0.0


# Ego4D: x is the number of instances of the class in the video.
MOMENTS = [
    Segment("a", "jump", 0, 10),  # j1
    Segment("a", "jump", 20, 30),  # j2
    Segment("a", "run", 40, 50),  # r1
    Segment("b", "jump", 0, 10),  # b1
]
RETRIEVED = [
    Segment("a", "jump", 0, 10, 0.9),  # j1 at tIoU 1
    Segment("a", "jump", 0, 9, 0.8),  # j1 again (0.9)
    Segment("a", "jump", 20, 24, 0.7),  # j2 at 0.4
    Segment("a", "jump", 60, 70, 0.6),  # nothing
    Segment("a", "jump", 20, 30, 0.1),  # j2 at tIoU 1, ranked fifth
    Segment("a", "run", 20, 30, 0.95),  # j2's span, but run: ranks first among a's runs
    Segment("a", "run", 40, 45, 0.9),  # r1 at exactly 0.5: not above 0.5
    Segment("b", "run", 0, 10, 0.9),  # b1's span, but not its class
    Segment("b", "swim", 0, 10, 0.9),  # a class without ground truth
]


def test_recall_at_kx_hand_worked():
    result = recall_at_kx(MOMENTS, RETRIEVED, (0.1, 0.3, 0.5), (1, 2, 5))
    # 1x: a/jump (2 instances) takes its top 2 (j1 twice); a/run (1) its top 1, the miss
    # at 20-30; b/jump has no jump predictions. j1 alone: 1/4 at every threshold.
    # 2x: a/jump's top 4 add j2 at 0.4 (0.1, 0.3); a/run's top 2 add r1 at 0.5 (0.1 and
    # 0.3; 0.5 is not above 0.5).
    # 5x: a/jump's top 10 hold all 5, j2 at tIoU 1 too.
    expected = np.array(
        [
            [1 / 4, 3 / 4, 3 / 4],  # tIoU 0.1
            [1 / 4, 3 / 4, 3 / 4],  # 0.3
            [1 / 4, 1 / 4, 2 / 4],  # 0.5
        ]
    )
    assert result.recall == pytest.approx(expected)
    assert (result.videos, result.instances, result.predictions, result.ignored) == (2, 4, 9, 1)
    report = result.to_dict()
    assert report["recall"]["5x"] == pytest.approx({"0.10": 0.75, "0.30": 0.75, "0.50": 0.5})
    assert report["ignored_predictions"] == 1
    assert result.table().splitlines() == [
        "  tIoU    R@1x    R@2x    R@5x",
        "  0.10   25.00   75.00   75.00",
        "  0.30   25.00   75.00   75.00",
        "  0.50   25.00   25.00   50.00",
    ]


def test_recall_edge_cases():
    assert not recall_at_kx(MOMENTS, []).recall.any()
    result = recall_at_kx([], RETRIEVED)
    assert result.instances == 0 and not result.recall.any()
    # A class with no ground truth in a video takes nothing there: b's run never counts.
    only_b = [Segment("b", "jump", 0, 10)]
    assert not recall_at_kx(only_b, RETRIEVED[-2:]).recall.any()
    # Equal scores keep the file's order (the official code reads its file in order).
    truth = [Segment("a", "x", 0, 10)]
    miss, hit = Segment("a", "x", 50, 60, 0.5), Segment("a", "x", 0, 10, 0.5)
    assert recall_at_kx(truth, [hit, miss], (0.5,), (1,)).recall[0, 0] == 1.0
    assert recall_at_kx(truth, [miss, hit], (0.5,), (1,)).recall[0, 0] == 0.0


def test_parse_multipliers():
    assert parse_multipliers("1,5") == (1, 5) and parse_multipliers("3") == (3,)
    for text in ("", "0", "1,x", "1.5"):
        with pytest.raises(ConfigError, match="Recall@kx"):
            parse_multipliers(text)


def _files(tmp_path, truth, predictions, with_labels=True):
    """`truth` as ActivityNet-1.3 JSON, `predictions` as an ActivityNet result keyed with
    the `v_` of ActivityNet's file names (without labels: proposals, as ActivityNet's
    proposal task has them)."""
    database: dict = {}
    for s in truth:
        video = database.setdefault(s.video_id, {"subset": "validation", "annotations": []})
        video["annotations"].append({"segment": [s.start, s.end], "label": s.label})
    (tmp_path / "gt.json").write_text(json.dumps({"version": "VERSION 1.3", "database": database}))
    results: dict = {}
    for p in predictions:
        entry = {"segment": [p.start, p.end], "score": p.score}
        results.setdefault(f"v_{p.video_id}", []).append(
            {**entry, "label": p.label} if with_labels else entry
        )
    (tmp_path / "pred.json").write_text(json.dumps({"results": results}))
    return ["--gt", tmp_path / "gt.json", "--pred", tmp_path / "pred.json"]


def test_eval_command_average_recall(tmp_path):
    files = _files(tmp_path, TRUTH, PROPOSALS, with_labels=False)
    report = json.loads(run("eval", *files, "--metric", "ar", "--format", "json"))
    assert report["AR"] == pytest.approx({"1": 1 / 3, "5": 2 / 3, "10": 2 / 3, "100": 2 / 3})
    assert report["AUC"] == pytest.approx(0.658333333)
    assert list(report["recall"]) == [f"{t:.2f}" for t in ANET_TIOU]
    assert report["predictions_format"] == "ActivityNet result JSON (pred.json)"
    table = run("eval", *files, "--metric", "ar")
    assert "2 videos, 3 ground-truth segments of 2 classes, 4 predictions" in table
    assert "(scored as proposals: labels ignored)" in table
    assert "  tIoU    AR@1    AR@5   AR@10  AR@100" in table
    assert "   AUC   65.83" in table
    # The same file without labels is an error for the metrics that need them.
    result = CliRunner().invoke(main, ["eval", *map(str, files)])
    assert result.exit_code != 0 and "no 'label'" in result.output


def test_eval_command_recall_at_kx(tmp_path):
    files = _files(tmp_path, MOMENTS, RETRIEVED)
    report = json.loads(run("eval", *files, "--metric", "recall", "--format", "json"))
    # The defaults: k 1, 5 at tIoU 0.1, 0.3, 0.5 (RETRIEVED's figures worked out above).
    assert report["recall"] == {
        "1x": {"0.10": 0.25, "0.30": 0.25, "0.50": 0.25},
        "5x": {"0.10": 0.75, "0.30": 0.75, "0.50": 0.5},
    }
    table = run("eval", *files, "--metric", "recall", "--k", "2", "--tiou", "0.3")
    assert table.splitlines()[-2:] == ["  tIoU    R@2x", "  0.30   75.00"]
    assert "(1 of labels not in the ground truth: ignored)" in table
    for args, message in [
        (["--metric", "ar", "--per-class"], "--per-class is for --metric map"),
        (["--k", "1"], "--k is for --metric recall"),
        (["--metric", "recall", "--k", "0"], "Recall@kx: expected"),
    ]:
        result = CliRunner().invoke(main, ["eval", *map(str, files), *args])
        assert result.exit_code != 0 and message in result.output, result.output
