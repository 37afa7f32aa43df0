"""A LoSA encoder on long videos: the frozen backbone in chunks, recomputation of the
adapters only, and a forward pass that never touches the host."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from lofipipe.models import registry
from lofipipe.models.registry import build_encoder


@pytest.fixture
def encoder(monkeypatch):
    """vit_s with LoSA adapters, open gates and backbone chunks of 2 snippets."""
    monkeypatch.setattr(registry, "LOSA_CHUNK", 2)
    torch.manual_seed(0)
    encoder = build_encoder("vit_s", losa=True)
    encoder.net.gates.data.fill_(0.5)
    return encoder


def _snippets(count: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, 16, 3, 32, 32), dtype=torch.uint8)


def _runs(vit) -> list[int]:
    """A list that grows by the snippet count of each run of a ViT's first block."""
    runs: list[int] = []
    vit.blocks[0].register_forward_hook(lambda module, inputs, out: runs.append(len(out)))
    return runs


def test_chunked_backbone_gives_the_whole_video_result(encoder):
    snippets = _snippets(5)
    runs = _runs(encoder.net.backbone)
    with torch.no_grad():
        chunked = encoder(snippets)
        # The computation as written before chunking: the backbone over all snippets at
        # once, then each tap's gated adapters added to the feature.
        net = encoder.net
        feature, tapped = net.backbone.features(encoder._normalized(snippets), net.taps)
        gates = torch.tanh(net.gates)
        for index, tap in enumerate(tapped):
            feature = feature + gates[0, index] * net.short[index](tap)
            feature = feature + gates[1, index] * net.long[index](tap)
    assert runs[:3] == [2, 2, 1]  # the backbone saw at most 2 snippets at a time
    assert chunked.shape == (5, 384)
    assert torch.allclose(chunked, feature, atol=1e-5)


def test_recompute_runs_the_backbone_once_with_the_same_gradients(encoder):
    snippets = _snippets(5)
    runs = _runs(encoder.net.backbone)
    adapters = [p for p in encoder.parameters() if p.requires_grad]

    def step(forward) -> list[torch.Tensor]:
        encoder.zero_grad()
        runs.clear()
        forward(snippets).square().mean().backward()
        return [p.grad.clone() for p in adapters]

    plain = step(encoder)
    assert runs == [2, 2, 1]
    recomputed = step(lambda x: encoder(x, recompute=True))
    assert runs == [2, 2, 1]  # no backbone run again in the backward pass
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, recomputed, strict=True))
    # The old way, the whole encoder checkpointed by its caller, still trains the same.
    wrapped = step(lambda x: checkpoint(encoder, x, use_reentrant=False))
    assert runs == [2, 2, 1] * 2
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, wrapped, strict=True))
    assert all(p.grad is None for p in encoder.net.backbone.parameters())


def test_recompute_checkpoints_a_plain_encoder():
    torch.manual_seed(0)
    encoder = build_encoder("vit_s")
    runs = _runs(encoder.net)
    snippets = _snippets(2)
    grads = []
    for recompute in (False, True):
        encoder.zero_grad()
        encoder(snippets, recompute=recompute).square().mean().backward()
        grads.append([p.grad.clone() for p in encoder.parameters()])
    assert runs == [2, 2, 2]  # recomputed in the backward pass
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))
    with torch.no_grad():  # nothing to recompute without gradients
        encoder(snippets, recompute=True)
    assert runs == [2, 2, 2, 2]


class _HostWatch(TorchFunctionMode):
    """Records every torch call that returns a tensor off the meta device."""

    def __init__(self):
        super().__init__()
        self.host: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, tuple) else (out,):
            if isinstance(value, torch.Tensor) and not value.is_meta:
                self.host.append(getattr(func, "__name__", str(func)))
        return out


def test_losa_forward_on_the_meta_device_stays_off_the_host(monkeypatch):
    """A stand-in for a GPU: a host tensor or a host sync made in forward shows here."""
    monkeypatch.setattr(registry, "LOSA_CHUNK", 2)
    with torch.device("meta"):
        encoder = build_encoder("vit_s", losa=True)
    snippets = torch.empty(5, 16, 3, 32, 32, dtype=torch.uint8, device="meta")
    with _HostWatch() as watch:
        features = encoder(snippets, recompute=True)
        features.sum().backward()
    assert watch.host == []
    assert features.is_meta and features.shape == (5, 384)
    assert encoder.net.gates.grad.is_meta
