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


@pytest.mark.parametrize(
    "name, dim",
    [("tiny", 128), ("tsm_r18", 512), ("tsm_r50", 2048), ("vit_s", 384), ("vit_b", 768)],
)
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
    counts = {
        name: sum(p.numel() for p in build_encoder(name).parameters())
        for name in ("tsm_r18", "tsm_r50")
    }
    # torchvision's ResNet-18/50 without the classifier: 11,176,512 and 23,508,032.
    assert counts == {"tsm_r18": 11_176_512, "tsm_r50": 23_508_032}


def test_unknown_encoder():
    with pytest.raises(ConfigError, match="unknown encoder 'vit_x'"):
        build_encoder("vit_x")


def test_vit_sizes_match_videomae_v2():
    from lofipipe.models.vit import VIT_SIZES, VideoViT

    counts, patches = {}, {}
    for size, shape in VIT_SIZES.items():
        with torch.device("meta"):  # no memory for the billion parameters of vit_g
            model = VideoViT(*shape)
        counts[size] = sum(p.numel() for p in model.parameters())
        patches[size] = model.patch_embed.proj.weight.shape[-1]
    # VideoMAE-v2's vit_small/base/large_patch16_224 and vit_giant_patch14_224 without
    # their classifier (~22M, 86M, 304M and 1.01B; q and v biases, no key bias).
    assert counts == {"s": 21_879_936, "b": 86_227_200, "l": 303_860_736, "g": 1_011_610_752}
    assert patches == {"s": 16, "b": 16, "l": 16, "g": 14}


def test_losa_trains_adapters_only_and_starts_as_the_backbone():
    torch.manual_seed(0)
    encoder = build_encoder("vit_s", losa=True)
    snippets = torch.randint(0, 256, (5, 16, 3, 32, 32), dtype=torch.uint8)  # 5 snippets
    backbone = encoder.net.backbone
    with torch.no_grad():
        plain = backbone((snippets.float() - encoder.mean) / encoder.std)
    assert torch.allclose(encoder(snippets), plain, atol=1e-5)  # gates start closed

    encoder.net.gates.data.fill_(0.5)
    encoder(snippets).square().mean().backward()
    assert all(p.grad is None for p in backbone.parameters())
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert sum(p.numel() for p in trainable) < 0.05 * sum(p.numel() for p in backbone.parameters())
    assert encoder.net.gates.grad.abs().sum() > 0


def test_losa_only_on_vits():
    with pytest.raises(ConfigError, match="LoSA adapters run beside a ViT"):
        build_encoder("tsm_r18", losa=True)


_STEP = """
import sys, torch
from lofipipe.models.registry import build_encoder
torch.manual_seed(0)
encoder = build_encoder("vit_s", losa=sys.argv[1] == "losa")
encoder.train()
if sys.argv[1] == "losa":
    encoder.net.gates.data.fill_(0.5)
snippets = torch.randint(0, 256, (8, 16, 3, 96, 96), dtype=torch.uint8)
baseline = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
encoder(snippets).square().mean().backward()
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(peak - baseline)
"""


def test_losa_step_needs_less_memory_than_fine_tuning():
    """Peak memory of one training step above the loaded model, fresh process each."""
    import subprocess
    import sys

    peaks = {}
    for mode in ("losa", "full"):
        out = subprocess.run(
            [sys.executable, "-c", _STEP, mode],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        peaks[mode] = int(out.stdout.strip().splitlines()[-1])
    assert peaks["losa"] < 0.5 * peaks["full"], peaks


def test_vit_position_table_is_built_once_per_token_count_and_never_saved():
    from lofipipe.models.vit import VideoViT, sincos_positions

    torch.manual_seed(0)
    vit = VideoViT(64, 2, 2, 128)
    keys = list(vit.state_dict())
    clips = torch.rand(2, 16, 3, 32, 32)  # 8 x 2 x 2 = 32 tokens a clip
    tokens = vit.tokens(clips)
    table = vit.positions(32, clips.device)
    assert table.dtype == torch.float32
    assert torch.equal(table, sincos_positions(32, 64))
    embedded = vit.patch_embed.proj(clips.transpose(1, 2)).flatten(2).transpose(1, 2)
    assert torch.equal(tokens, embedded + table)
    assert vit.positions(32, clips.device) is table  # kept, not built again
    assert vit.tokens(torch.rand(1, 16, 3, 64, 64)).shape == (1, 128, 64)  # built anew
    assert torch.equal(vit.positions(128, clips.device), sincos_positions(128, 64))
    assert vit.positions(128, torch.device("meta")).is_meta  # built where the tokens are
    assert list(vit.state_dict()) == keys  # checkpoints keep their layout
