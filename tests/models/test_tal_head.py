"""The TAL head: shapes and masking, target assignment, losses against hand-computed
values, soft-NMS."""

import math

import numpy as np
import pytest
import torch

from lofipipe.models.tal_head import (
    TALHead,
    assign_targets,
    diou_loss_1d,
    sigmoid_focal_loss,
)
from lofipipe.models.tal_postprocess import PostProcessing, detect, soft_nms


def test_pyramid_shapes_and_padding_is_ignored():
    torch.manual_seed(0)
    head = TALHead(in_dim=16, num_classes=3, dim=32, levels=4).eval()
    features = torch.randn(2, 16, 32)
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, 20:] = False
    out = head(features, mask)
    assert [tuple(x.shape) for x in out.logits] == [(2, 32, 3), (2, 16, 3), (2, 8, 3), (2, 4, 3)]
    assert [tuple(x.shape) for x in out.offsets] == [(2, 32, 2), (2, 16, 2), (2, 8, 2), (2, 4, 2)]
    assert out.strides == [1, 2, 4, 8] and out.masks[1][1].sum() == 10
    assert all((x >= 0).all() for x in out.offsets)
    # What lies past a video's end changes nothing of its outputs.
    noisy = features.clone()
    noisy[1, :, 20:] = 1000.0
    again = head(noisy, mask)
    for before, after, level_mask in zip(out.logits, again.logits, out.masks, strict=True):
        valid = level_mask[1]
        assert torch.allclose(before[1][valid], after[1][valid], atol=1e-5)
    # Classification starts at the prior probability of 1%.
    assert torch.sigmoid(out.logits[0]).mean().item() == pytest.approx(0.01, abs=0.01)


def test_targets_follow_center_sampling_and_regression_ranges():
    segments = torch.tensor([[2.0, 5.0], [0.0, 8.0]])
    labels = torch.tensor([1, 0])
    classes, distances = assign_targets(
        segments, labels, lengths=[8, 4], strides=[1, 2], num_classes=2
    )
    positive = {
        int(i): (int(classes[i].argmax()), tuple(distances[i].tolist()))
        for i in torch.nonzero(classes.sum(1)).flatten()
    }
    # Level 0 (stride 1, extents 0-4): points 3 and 4 lie near the center of [2, 5];
    # point 4 is also near [0, 8]'s center and fits, and takes the shorter action.
    # Level 1 (stride 2, extents 4-8, radius 3): points at 2, 4, 6 of [0, 8], distances
    # in strides.
    assert positive == {
        3: (1, (1.0, 2.0)),
        4: (1, (2.0, 1.0)),
        8 + 1: (0, (1.0, 3.0)),
        8 + 2: (0, (2.0, 2.0)),
        8 + 3: (0, (3.0, 1.0)),
    }


def test_focal_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0]])
    # p = 1/2: 0.25 * (1/2)^2 * ln 2 for the positive, 0.75 * (1/2)^2 * ln 2 for the other
    expected = (0.25 + 0.75) * 0.25 * math.log(2)
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected)
    confident = sigmoid_focal_loss(torch.tensor([[6.0, -6.0]]), targets).item()
    assert confident < 1e-6  # easy examples weigh almost nothing


def test_diou_loss_by_hand():
    # pred covers [p-1, p+1], target [p-1, p+3]: IoU 2/4, centers 1 apart, enclosing 4.
    loss = diou_loss_1d(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 3.0]]))
    assert loss.item() == pytest.approx(1 - 0.5 + (1 / 4) ** 2)
    assert diou_loss_1d(
        torch.tensor([[2.0, 3.0]]), torch.tensor([[2.0, 3.0]])
    ).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_nms_decays_overlaps_of_the_same_class_only():
    segments = np.array([[0, 10], [1, 10], [0, 10], [20, 30]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([0, 0, 1, 0])
    kept, kept_scores, kept_labels = soft_nms(
        segments, scores, labels, sigma=0.5, min_score=0.001, max_segments=10
    )
    decayed = 0.8 * math.exp(-(0.9**2) / 0.5)  # tIoU([0, 10], [1, 10]) = 0.9
    assert np.allclose(kept_scores, [0.9, 0.7, 0.6, decayed])
    assert kept_labels.tolist() == [0, 1, 0, 0]
    assert kept.tolist() == [[0, 10], [0, 10], [20, 30], [1, 10]]
    top = soft_nms(segments, scores, labels, 0.5, 0.001, max_segments=2)
    assert top[1].tolist() == [0.9, 0.7]


def test_detect_turns_confident_points_into_segments():
    torch.manual_seed(0)
    head = TALHead(in_dim=4, num_classes=2, dim=8, levels=2).eval()
    with torch.no_grad():
        out = head(torch.randn(1, 4, 8), torch.ones(1, 8, dtype=torch.bool))
    for logits in out.logits:
        logits.fill_(-20.0)
    out.logits[0][0, 3, 1] = 5.0  # class 1 at point 3, 1 snippet left and 2 right
    out.offsets[0][0, 3] = torch.tensor([1.0, 2.0])
    segments, scores, labels = detect(out, 0, 8, PostProcessing())
    assert labels[0] == 1 and np.allclose(segments[0], [2.0, 5.0])
    assert scores[0] == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())
    assert scores[1:].max(initial=0) < 0.01
