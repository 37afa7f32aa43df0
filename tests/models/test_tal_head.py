"""The TAL head: shapes and masking of both trunks, the local attention against a dense
reference, overfitting a few videos, target assignment, losses against hand-computed
values, soft-NMS."""

import math

import numpy as np
import pytest
import torch

from lofipipe.models.local_attention import local_attention
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


def test_actions_of_one_length_at_a_point_all_label_it():
    # Two classes over the same span, and a longer action of a third class around them:
    # the points near their center carry both short actions' classes, not the long one.
    segments = torch.tensor([[2.0, 5.0], [2.0, 5.0], [0.0, 8.0]])
    labels = torch.tensor([0, 1, 2])
    classes, distances = assign_targets(
        segments, labels, lengths=[8, 4], strides=[1, 2], num_classes=3
    )
    assert classes[3].tolist() == [1.0, 1.0, 0.0] and classes[4].tolist() == [1.0, 1.0, 0.0]
    assert distances[4].tolist() == [2.0, 1.0]
    assert classes[8 + 2].tolist() == [0.0, 0.0, 1.0]


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


def test_losses_weighted_by_a_mask_equal_the_losses_of_the_points_selected():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 7, 3), (torch.rand(2, 7, 3) > 0.7).float()
    predicted = torch.rand(2, 7, 2, requires_grad=True)
    distances = torch.rand(2, 7, 2) * 3
    distances[0, 0] = 0.0  # what a point that is not positive holds: no gradient from it
    mask = torch.rand(2, 7) > 0.4
    mask[0, 0] = False
    assert torch.allclose(
        sigmoid_focal_loss(logits, targets, weight=mask.float()),
        sigmoid_focal_loss(logits[mask], targets[mask]),
    )
    weighted = diou_loss_1d(predicted, distances, weight=mask.float())
    assert torch.allclose(weighted, diou_loss_1d(predicted[mask], distances[mask]))
    weighted.backward()
    assert torch.isfinite(predicted.grad).all() and not predicted.grad[~mask].any()


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


ARCHS = ["conv", "transformer"]


def _small_head(arch: str, levels: int = 6, in_dim: int = 16) -> TALHead:
    return TALHead(in_dim, 3, dim=32, levels=levels, arch=arch, attention_window=9)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("length", [64, 100, 256])
def test_both_trunks_give_every_level_its_points(arch, length):
    torch.manual_seed(0)
    head = _small_head(arch).eval()
    out = head(torch.randn(2, 16, length), torch.ones(2, length, dtype=torch.bool))
    sizes = [math.ceil(length / 2**level) for level in range(6)]
    assert [tuple(x.shape) for x in out.logits] == [(2, n, 3) for n in sizes]
    assert [tuple(x.shape) for x in out.offsets] == [(2, n, 2) for n in sizes]
    assert [tuple(m.shape) for m in out.masks] == [(2, n) for n in sizes]
    assert out.strides == [1, 2, 4, 8, 16, 32]
    assert all(torch.isfinite(x).all() for x in out.logits + out.offsets)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_video_gives_the_same_outputs_however_its_batch_pads_it(arch):
    torch.manual_seed(0)
    head = _small_head(arch).eval()
    with torch.no_grad():  # trained norms have biases: padding must not leak through them
        for parameter in head.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    video = torch.randn(1, 16, 70)
    alone = head(video, torch.ones(1, 70, dtype=torch.bool))
    batch = torch.full((2, 16, 100), 1000.0)  # garbage past the end of the first video
    batch[0, :, :70] = video[0]
    batch[1] = torch.randn(16, 100)
    mask = torch.ones(2, 100, dtype=torch.bool)
    mask[0, 70:] = False
    padded = head(batch, mask)
    for level, stride in enumerate(padded.strides):
        valid = math.ceil(70 / stride)
        assert padded.masks[level][0].tolist() == [True] * valid + [False] * (
            padded.masks[level].shape[1] - valid
        )
        for name in ("logits", "offsets"):
            ours = getattr(padded, name)[level][0, :valid]
            expected = getattr(alone, name)[level][0]
            assert torch.allclose(ours, expected, atol=1e-4), (name, level)


def _banded_attention(query, key, value, valid, window):
    """Dense T x T attention under the band |i - j| <= window // 2 and the key mask."""
    steps = torch.arange(query.shape[2])
    band = (steps[:, None] - steps[None, :]).abs() <= window // 2
    allowed = band[None, None] & valid[:, None, None, :]
    scores = (query @ key.transpose(-1, -2)).masked_fill(~allowed, -math.inf)
    return scores.softmax(dim=-1) @ value


@pytest.mark.parametrize("length", [1, 7, 18, 37])
@pytest.mark.parametrize("window", [3, 9, 19])
def test_local_attention_equals_a_dense_banded_attention(length, window):
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 3, length, 5, dtype=torch.float64) for _ in range(3))
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, length // 2 + 1 :] = False
    ours = local_attention(query, key, value, valid, window)
    expected = _banded_attention(query, key, value, valid, window)
    assert torch.allclose(ours[0], expected[0])
    # Padded queries may see no valid key at all: the reference has NaN there.
    assert torch.allclose(ours[1][:, valid[1]], expected[1][:, valid[1]])


def _synthetic_videos() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[int]]:
    """Three 64-snippet videos, noise with one action each whose snippets carry its class's
    pattern; the third is 48 snippets long, padded."""
    generator = torch.Generator().manual_seed(1)
    patterns = torch.randn(3, 8, 1, generator=generator)
    features = 0.5 * torch.randn(3, 8, 64, generator=generator)
    mask = torch.ones(3, 64, dtype=torch.bool)
    mask[2, 48:] = False
    actions = [(0, 10, 22), (1, 30, 50), (2, 4, 12)]  # (class, start, end) in snippets
    segments, labels = [], []
    for video, (label, start, end) in enumerate(actions):
        features[video, :, start:end] += 2.0 * patterns[label]
        segments.append(torch.tensor([[float(start), float(end)]]))
        labels.append(label)
    return features, mask, segments, labels


@pytest.fixture
def one_thread():
    """Steps on tensors this small run several times faster on one thread than on two
    contending ones (5 against 28 ms a step, measured on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", ARCHS)
def test_both_trunks_overfit_three_videos_and_find_their_actions(arch, one_thread):
    torch.manual_seed(0)
    features, mask, segments, labels = _synthetic_videos()
    head = TALHead(8, 3, dim=32, levels=4, arch=arch, attention_window=9)
    lengths = [64 // stride for stride in (1, 2, 4, 8)]
    targets = [
        assign_targets(segments[v], torch.tensor([labels[v]]), lengths, [1, 2, 4, 8], 3)
        for v in range(3)
    ]
    classes = torch.stack([t[0] for t in targets])
    distances = torch.stack([t[1] for t in targets])
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        out = head(features, mask)
        logits, offsets = torch.cat(out.logits, 1), torch.cat(out.offsets, 1)
        valid = torch.cat(out.masks, 1)
        positive = (classes.sum(-1) > 0) & valid
        loss = sigmoid_focal_loss(logits[valid], classes[valid]) + diou_loss_1d(
            offsets[positive], distances[positive]
        )
        loss = loss / positive.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    head.eval()
    with torch.no_grad():
        out = head(features, mask)
    for video, length in enumerate([64, 64, 48]):
        found, _, found_labels = detect(out, video, length)
        start, end = segments[video][0].tolist()
        overlap = min(end, found[0][1]) - max(start, found[0][0])
        union = max(end, found[0][1]) - min(start, found[0][0])
        assert found_labels[0] == labels[video] and overlap / union > 0.5


def test_the_transformer_trunk_has_actionformers_parameters():
    # ActionFormer's THUMOS-14 model (configs/thumos_i3d.yaml over libs/core/config.py):
    # I3D features of 2048 channels, width 512, 4 heads, window 19, arch (2, 2, 5). Its
    # ConvTransformerBackbone and FPNIdentity hold 26,067,968 parameters (counted by
    # instantiating the official code). Built and run on the meta device, as
    # `lofipipe plan` does.
    with torch.device("meta"):
        head = TALHead(2048, 20, dim=512, levels=6, arch="transformer")
        out = head(torch.randn(2, 2048, 2304), torch.ones(2, 2304, dtype=torch.bool))
        sum(x.sum() for x in out.logits + out.offsets).backward()
    trunk = [head.embed, head.stem, head.branch, head.level_norms]
    assert sum(p.numel() for module in trunk for p in module.parameters()) == 26_067_968
    assert [x.shape[1] for x in out.logits] == [2304, 1152, 576, 288, 144, 72]
