import pytest
import torch

from lofipipe.errors import ConfigError
from lofipipe.models.registry import ENCODERS, build_encoder
from lofipipe.models.tsm import temporal_shift


def test_temporal_shift_by_hand():
    # One clip of 3 frames, 8 channels of one pixel each: value = 10 * frame + channel.
    x = torch.tensor([[10.0 * t + c for c in range(8)] for t in range(3)]).view(3, 8, 1, 1)
    out = temporal_shift(x, frames=3, divisor=8).view(3, 8)
    # Channel 0 takes the next frame's value, channel 1 the previous one's, zeros at ends.
    assert out[:, 0].tolist() == [10.0, 20.0, 0.0]
    assert out[:, 1].tolist() == [0.0, 1.0, 11.0]
    assert torch.equal(out[:, 2:], x.view(3, 8)[:, 2:])


def test_shift_keeps_clips_apart():
    x = torch.arange(2 * 2 * 8, dtype=torch.float32).view(4, 8, 1, 1)  # 2 clips of 2 frames
    out = temporal_shift(x, frames=2).view(2, 2, 8)
    assert out[0, 1, 0] == 0 and out[1, 0, 1] == 0  # no value crosses from clip to clip


@pytest.mark.parametrize("name, dim", [("tiny", 64), ("tsm_r18", 512), ("tsm_r50", 2048)])
def test_encoders_shape_and_determinism(name, dim):
    torch.manual_seed(0)
    encoder = build_encoder(name).eval()
    spec = ENCODERS[name]
    snippets = torch.randint(0, 256, (2, spec.frames, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        first, second = encoder(snippets), encoder(snippets)
    assert first.shape == (2, dim) and encoder.dim == dim
    assert torch.equal(first, second)
    with torch.no_grad():  # each snippet is encoded on its own
        alone = encoder(snippets[1:])
    assert torch.allclose(alone[0], first[1], atol=1e-5)


def test_parameter_counts_match_the_resnets():
    counts = {name: sum(p.numel() for p in build_encoder(name).parameters())
              for name in ("tsm_r18", "tsm_r50")}
    # torchvision's ResNet-18/50 without the classifier: 11,176,512 and 23,508,032.
    assert counts == {"tsm_r18": 11_176_512, "tsm_r50": 23_508_032}


def test_unknown_encoder():
    with pytest.raises(ConfigError, match="unknown encoder 'vit_x'"):
        build_encoder("vit_x")
