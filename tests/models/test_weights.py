"""Loading encoder weights in the published layouts, from local storage and S3.

The published state dicts are written here from the official code's parameter names and
shapes (each builder says which file defines them), not from lofipipe's own state dict.
"""

import functools
import io
import math
import os
from dataclasses import replace

import pytest
import torch
from support.reliability import record
from torch.nn import functional

from lofipipe.errors import InputError
from lofipipe.models.registry import (
    ENCODERS,
    architecture_digest,
    build_encoder,
    encoder_fingerprint,
)
from lofipipe.models.vit import LoSA, VideoViT, sincos_positions
from lofipipe.models.weights import inspect_checkpoint, load_weights, read_checkpoint
from lofipipe.storage import Store


@functools.cache
def _trained_r18():
    """Read only: shared by the tests."""
    torch.manual_seed(1)
    encoder = build_encoder("tsm_r18")
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    return encoder


def _tsm_release_layout(state):
    """Keys as the TSM release names them: a DataParallel and TSN wrapper, the shifted
    convolutions wrapped as `.net`, and a classifier."""
    out = {}
    for key, value in state.items():
        if ".conv1." in key and key.startswith("layer"):
            key = key.replace(".conv1.", ".conv1.net.")
        out[f"module.base_model.{key}"] = value
    out["module.new_fc.weight"] = torch.zeros(400, 512)
    out["module.new_fc.bias"] = torch.zeros(400)
    return {"epoch": 50, "arch": "resnet18", "state_dict": out, "best_prec1": 70.0}


def _mmaction2_resnet(trained, blocks, bottleneck):
    """Keys as MMAction2's Recognizer2D with ResNetTSM and TSMHead names them
    (mmaction/models/backbones/resnet.py, resnet_tsm.py): mmcv ConvModules `convN.conv` /
    `convN.bn`, `downsample.conv` / `downsample.bn`, each block's shifted first conv as
    `conv1.conv.net`, under `backbone.`; the classifier `cls_head.fc_cls`; all under
    `state_dict`. Values are taken from torchvision names (`trained`)."""
    stats = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    out = {"backbone.conv1.conv.weight": trained["conv1.weight"]}
    out |= {f"backbone.conv1.bn.{s}": trained[f"bn1.{s}"] for s in stats}
    convs = (1, 2, 3) if bottleneck else (1, 2)
    for stage, count in enumerate(blocks, 1):
        for index in range(count):
            ours, theirs = f"layer{stage}.{index}", f"backbone.layer{stage}.{index}"
            out[f"{theirs}.conv1.conv.net.weight"] = trained[f"{ours}.conv1.weight"]
            for n in convs[1:]:
                out[f"{theirs}.conv{n}.conv.weight"] = trained[f"{ours}.conv{n}.weight"]
            for n in convs:
                out |= {f"{theirs}.conv{n}.bn.{s}": trained[f"{ours}.bn{n}.{s}"] for s in stats}
            if f"{ours}.downsample.0.weight" in trained:
                out[f"{theirs}.downsample.conv.weight"] = trained[f"{ours}.downsample.0.weight"]
                out |= {
                    f"{theirs}.downsample.bn.{s}": trained[f"{ours}.downsample.1.{s}"]
                    for s in stats
                }
    width = 2048 if bottleneck else 512
    out |= {
        "cls_head.fc_cls.weight": torch.zeros(400, width),
        "cls_head.fc_cls.bias": torch.zeros(400),
    }
    return {"meta": {"epoch": 50}, "state_dict": out}


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("plain", "torchvision-resnet"),
        ("tsm", "tsm-release"),
        ("nested", "torchvision-resnet"),
        ("mmaction2", "mmaction2-tsm"),
        ("lofipipe", "lofipipe"),
    ],
)
def test_published_resnet_layouts_load(tmp_path, layout, expected):
    trained = _trained_r18().net.state_dict()
    checkpoint = {
        # torchvision's resnet18().state_dict(): conv1, bn1, layerN.M.downsample.0, fc
        "plain": {**trained, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)},
        "tsm": _tsm_release_layout(trained),
        "nested": {"module": trained, "epoch": 799},
        "mmaction2": _mmaction2_resnet(trained, (2, 2, 2, 2), bottleneck=False),
        "lofipipe": {"encoder": trained, "lofipipe": {"encoder": "tsm_r18"}},
    }[layout]
    if layout == "mmaction2":
        assert "backbone.layer1.0.conv1.conv.net.weight" in checkpoint["state_dict"]
        assert "backbone.layer2.0.downsample.bn.running_var" in checkpoint["state_dict"]
    torch.save(checkpoint, tmp_path / "w.pth")
    state, digest = read_checkpoint(str(tmp_path / "w.pth"), {})
    assert len(digest) == 64
    fresh = build_encoder("tsm_r18")
    loaded = load_weights(fresh.net, state, "w.pth", ("encoder",) if layout == "lofipipe" else ())
    assert loaded.name == expected
    for key, value in fresh.net.state_dict().items():
        assert torch.equal(value, trained[key]), key


def test_mmaction2_tsm_r50_loads():
    with torch.device("meta"):
        skeleton = build_encoder("tsm_r50").net
    trained = {  # a different value in each tensor, cheaper than random ones
        key: torch.full(value.shape, float(index), dtype=value.dtype)
        for index, (key, value) in enumerate(skeleton.state_dict().items())
    }
    checkpoint = _mmaction2_resnet(trained, (3, 4, 6, 3), bottleneck=True)
    assert "backbone.layer1.0.conv3.bn.weight" in checkpoint["state_dict"]
    loaded = load_weights(skeleton, checkpoint["state_dict"], "tsm_r50_mmaction2.pth")
    assert loaded.name == "mmaction2-tsm" and loaded.ignored == {"classifier head": 2}
    assert torch.equal(skeleton.layer4[2].bn3.running_var, trained["layer4.2.bn3.running_var"])
    assert torch.equal(
        skeleton.layer1[0].downsample[0].weight, trained["layer1.0.downsample.0.weight"]
    )


def test_tsm_checkpoint_without_batch_counters_loads():
    trained = _trained_r18().net.state_dict()
    release = _tsm_release_layout(trained)["state_dict"]
    release = {k: v for k, v in release.items() if not k.endswith("num_batches_tracked")}
    assert "module.base_model.bn1.running_mean" in release
    fresh = build_encoder("tsm_r18")
    fresh.net.bn1.num_batches_tracked.fill_(7)
    loaded = load_weights(fresh.net, release, "w.pth")
    assert loaded.name == "tsm-release"
    assert any("num_batches_tracked" in note for note in loaded.notes)
    assert torch.equal(fresh.net.layer3[0].bn2.running_mean, trained["layer3.0.bn2.running_mean"])
    assert fresh.net.bn1.num_batches_tracked.item() == 7  # the model's own, kept


def test_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    state = build_encoder("tsm_r50").net.state_dict()
    with pytest.raises(InputError) as caught:
        load_weights(build_encoder("tsm_r18").net, state, "r50.pth")
    message = str(caught.value)
    assert message.startswith("r50.pth: does not fit the model: missing")
    assert "unexpected" in message and "layer1.0.conv3.weight" in message
    state = build_encoder("tsm_r18").net.state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(InputError, match=r"conv1.weight has shape \(64, 3, 3, 3\)"):
        load_weights(build_encoder("tsm_r18").net, state, "w.pth")


@pytest.mark.reliability
def test_only_weights_ever_load(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Payload()}, buffer)
    (tmp_path / "evil.pth").write_bytes(buffer.getvalue())
    with pytest.raises(InputError, match="evil.pth: not a weights-only PyTorch checkpoint"):
        read_checkpoint(str(tmp_path / "evil.pth"), {})
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pth: not a weights-only"):
        read_checkpoint(str(tmp_path / "junk.pth"), {})
    with pytest.raises(InputError, match="checkpoint not found"):
        read_checkpoint(str(tmp_path / "missing.pth"), {})
    record(
        "input",
        "checkpoint carrying a pickled os.system call",
        "refused by torch.load(weights_only=True), nothing executed",
        "test_weights",
    )


def test_fingerprint_follows_weights_and_preprocessing():
    spec = ENCODERS["tsm_r18"]
    fidelity = {"snippets": 100, "frames": 8, "size": 224}
    base = encoder_fingerprint(spec, "sha256:aa", fidelity)
    assert base == encoder_fingerprint(spec, "sha256:aa", dict(fidelity))
    assert len(base) == 16
    assert base != encoder_fingerprint(spec, "sha256:bb", fidelity)
    assert base != encoder_fingerprint(spec, "sha256:aa", {**fidelity, "size": 112})
    assert base != encoder_fingerprint(ENCODERS["tsm_r50"], "sha256:aa", fidelity)
    assert base != encoder_fingerprint(replace(spec, revision=2), "sha256:aa", fidelity)
    with torch.device("meta"):
        plain, losa = build_encoder("vit_s"), build_encoder("vit_s", losa=True)
    assert architecture_digest(plain) != architecture_digest(losa)
    assert base != encoder_fingerprint(spec, "sha256:aa", fidelity, architecture_digest(plain))


@pytest.mark.s3
def test_weights_from_s3(s3_bucket):
    bucket, options = s3_bucket
    trained = _trained_r18().net.state_dict()
    buffer = io.BytesIO()
    torch.save(trained, buffer)
    Store(f"s3://{bucket}/ckpt", options).write_bytes("r18.pth", buffer.getvalue())
    state, _ = read_checkpoint(f"s3://{bucket}/ckpt/r18.pth", options)
    fresh = build_encoder("tsm_r18")
    load_weights(fresh.net, state, "r18.pth")
    assert torch.equal(fresh.net.conv1.weight, trained["conv1.weight"])


# A ViT small enough for the CPU in milliseconds: (dim, depth, heads, MLP hidden).
_DIM, _DEPTH, _HEADS, _HIDDEN = 32, 2, 4, 64


def _videomae_finetuned(dim=_DIM, depth=_DEPTH, hidden=_HIDDEN, patch=16, mean_pooling=True):
    """VisionTransformer(qkv_bias=True).state_dict() of VideoMAE's and VideoMAE-v2's
    models/modeling_finetune.py: an unbiased `qkv` with `q_bias` and `v_bias`, `fc_norm`
    (`norm` when use_mean_pooling is off) and the classifier `head`."""
    generator = torch.Generator().manual_seed(3)

    def draw(*shape, offset=0.0):
        return offset + 0.2 * torch.randn(*shape, generator=generator)

    state = {
        "patch_embed.proj.weight": draw(dim, 3, 2, patch, patch),
        "patch_embed.proj.bias": draw(dim),
    }
    for n in range(depth):
        state |= {
            f"blocks.{n}.norm1.weight": draw(dim, offset=1.0),
            f"blocks.{n}.norm1.bias": draw(dim),
            f"blocks.{n}.attn.q_bias": draw(dim),
            f"blocks.{n}.attn.v_bias": draw(dim),
            f"blocks.{n}.attn.qkv.weight": draw(3 * dim, dim),
            f"blocks.{n}.attn.proj.weight": draw(dim, dim),
            f"blocks.{n}.attn.proj.bias": draw(dim),
            f"blocks.{n}.norm2.weight": draw(dim, offset=1.0),
            f"blocks.{n}.norm2.bias": draw(dim),
            f"blocks.{n}.mlp.fc1.weight": draw(hidden, dim),
            f"blocks.{n}.mlp.fc1.bias": draw(hidden),
            f"blocks.{n}.mlp.fc2.weight": draw(dim, hidden),
            f"blocks.{n}.mlp.fc2.bias": draw(dim),
        }
    norm = "fc_norm" if mean_pooling else "norm"
    state |= {f"{norm}.weight": draw(dim, offset=1.0), f"{norm}.bias": draw(dim)}
    return state | {"head.weight": draw(400, dim), "head.bias": draw(400)}


def _videomae_pretrained(finetuned):
    """PretrainVisionTransformer.state_dict() of modeling_pretrain.py: the encoder under
    `encoder.` with its final `norm` (and no fc_norm, no head), the decoder's blocks, norm
    and pixel head, `encoder_to_decoder` and `mask_token`."""
    state = {
        f"encoder.{key.replace('fc_norm', 'norm')}": value
        for key, value in finetuned.items()
        if not key.startswith("head.")
    }
    decoder = 16
    return state | {
        "encoder_to_decoder.weight": torch.randn(decoder, _DIM),
        "mask_token": torch.zeros(1, 1, decoder),
        "decoder.blocks.0.attn.qkv.weight": torch.randn(3 * decoder, decoder),
        "decoder.blocks.0.attn.q_bias": torch.zeros(decoder),
        "decoder.norm.weight": torch.ones(decoder),
        "decoder.head.weight": torch.randn(3 * 2 * 16 * 16, decoder),
        "decoder.head.bias": torch.zeros(3 * 2 * 16 * 16),
    }


def _mmaction2_vit(finetuned, tokens):
    """MMAction2's Recognizer3D(VisionTransformer, TimeSformerHead).state_dict()
    (mmaction/models/backbones/vit_mae.py): mmcv's PatchEmbed `projection`, FFN
    `mlp.layers.0.0` / `mlp.layers.1`, the fixed `pos_embed` buffer; under `state_dict`."""
    renames = {"patch_embed.proj.": "patch_embed.projection.", "mlp.fc1.": "mlp.layers.0.0."}
    renames["mlp.fc2."] = "mlp.layers.1."
    state = {}
    for key, value in finetuned.items():
        if key.startswith("head."):
            continue
        for ours, theirs in renames.items():
            key = key.replace(ours, theirs)
        state[f"backbone.{key}"] = value
    state["backbone.pos_embed"] = sincos_positions(tokens, _DIM)[None]
    state["cls_head.fc_cls.weight"] = finetuned["head.weight"]
    state["cls_head.fc_cls.bias"] = finetuned["head.bias"]
    return {"meta": {}, "state_dict": state}


def _tiny_vit():
    return VideoViT(_DIM, _DEPTH, _HEADS, _HIDDEN, 16, frames=4).eval()


def _clips():
    return torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(4))


def _mean_of_normed_tokens(model, weight, bias):
    """The official pre-training encoder's output (every token through its final norm),
    averaged over the tokens."""
    x = model.tokens(_clips())
    for block in model.blocks:
        x = block(x)
    return functional.layer_norm(x, (_DIM,), weight, bias, eps=1e-6).mean(dim=1)


def test_separate_q_v_biases_compute_the_official_attention():
    official = _videomae_finetuned()
    model = _tiny_vit()
    assert load_weights(model, official, "w.pth").name == "videomae-finetuned"
    x = torch.randn(2, 5, _DIM, generator=torch.Generator().manual_seed(5))
    w_q, w_k, w_v = official["blocks.0.attn.qkv.weight"].chunk(3)
    q = x @ w_q.T + official["blocks.0.attn.q_bias"]
    k = x @ w_k.T  # VideoMAE has no key bias
    v = x @ w_v.T + official["blocks.0.attn.v_bias"]
    width = _DIM // _HEADS
    heads = []
    for h in range(_HEADS):
        part = slice(h * width, (h + 1) * width)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(width)
        heads.append(scores.softmax(dim=-1) @ v[..., part])
    expected = torch.cat(heads, dim=-1) @ official["blocks.0.attn.proj.weight"].T
    expected = expected + official["blocks.0.attn.proj.bias"]
    with torch.no_grad():
        assert torch.allclose(model.blocks[0].attn(x), expected, atol=1e-5)
        # The feature of a fine-tuned checkpoint: fc_norm of the mean token.
        tokens = model.tokens(_clips())
        for block in model.blocks:
            tokens = block(tokens)
        pooled = functional.layer_norm(
            tokens.mean(dim=1), (_DIM,), official["fc_norm.weight"], official["fc_norm.bias"], 1e-6
        )
        assert torch.allclose(model(_clips()), pooled, atol=1e-5)


def test_videomae_pretrained_features_are_the_encoders_normed_tokens_averaged(tmp_path):
    pretrained = _videomae_pretrained(_videomae_finetuned())
    torch.save({"model": pretrained}, tmp_path / "pt.pth")
    state, _ = read_checkpoint(str(tmp_path / "pt.pth"), {})
    model = _tiny_vit()
    loaded = load_weights(model, state, "pt.pth")
    assert loaded.name == "videomae-pretrained"
    assert loaded.ignored == {"pre-training decoder": 7}
    assert model.fc_norm is None and model.norm is not None
    with torch.no_grad():
        expected = _mean_of_normed_tokens(
            model, pretrained["encoder.norm.weight"], pretrained["encoder.norm.bias"]
        )
        assert torch.allclose(model(_clips()), expected, atol=1e-5)
    # Saved by lofipipe (`norm` kept) and read back into a fresh ViT: the same features.
    again = _tiny_vit()
    assert load_weights(again, model.state_dict(), "encoder.pt", ("encoder",)).name == "lofipipe"
    with torch.no_grad():
        assert torch.equal(again(_clips()), model(_clips()))


def test_finetuned_without_mean_pooling_normalizes_each_token():
    finetuned = _videomae_finetuned(mean_pooling=False)
    model = _tiny_vit()
    loaded = load_weights(model, finetuned, "w.pth")
    assert loaded.name == "videomae-finetuned" and "first token" in loaded.notes[0]
    with torch.no_grad():
        expected = _mean_of_normed_tokens(model, finetuned["norm.weight"], finetuned["norm.bias"])
        assert torch.allclose(model(_clips()), expected, atol=1e-5)


def test_mmaction2_vit_loads_and_its_fixed_positions_are_ours():
    finetuned = _videomae_finetuned()
    checkpoint = _mmaction2_vit(finetuned, tokens=8)
    assert "backbone.blocks.1.mlp.layers.0.0.weight" in checkpoint["state_dict"]
    model = _tiny_vit()
    loaded = load_weights(model, checkpoint["state_dict"], "mm.pth")
    assert loaded.name == "mmaction2-vit"
    assert loaded.ignored == {"classifier head": 2, "fixed sine-cosine positions": 1}
    assert torch.equal(model.blocks[1].mlp.fc1.weight, finetuned["blocks.1.mlp.fc1.weight"])
    assert torch.equal(model.patch_embed.proj.weight, finetuned["patch_embed.proj.weight"])
    # A learned position table is not lofipipe's: refused, by name.
    checkpoint["state_dict"]["backbone.pos_embed"] = torch.randn(1, 8, _DIM)
    with pytest.raises(InputError, match=r"unexpected 1 keys \['pos_embed'\]"):
        load_weights(_tiny_vit(), checkpoint["state_dict"], "mm.pth")


def test_older_lofipipe_vit_with_one_qkv_bias_loads_to_the_same_features():
    official = _videomae_finetuned()
    del official["head.weight"], official["head.bias"]
    older = dict(official)
    for n in range(_DEPTH):  # lofipipe's earlier ViT: one biased qkv, any key bias
        query, value = older.pop(f"blocks.{n}.attn.q_bias"), older.pop(f"blocks.{n}.attn.v_bias")
        older[f"blocks.{n}.attn.qkv.bias"] = torch.cat((query, torch.randn(_DIM), value))
    reference, model = _tiny_vit(), _tiny_vit()
    load_weights(reference, official, "new.pt")
    loaded = load_weights(model, older, "encoder.pt", ("encoder",))
    assert loaded.name == "lofipipe" and "q_bias and v_bias" in loaded.notes[0]
    with torch.no_grad():
        assert torch.allclose(model(_clips()), reference(_clips()), atol=1e-5)


def test_lofipipe_losa_checkpoint_loads():
    source = LoSA(_tiny_vit(), taps=(0, 1))
    target = LoSA(_tiny_vit(), taps=(0, 1))
    loaded = load_weights(target, source.state_dict(), "encoder.pt", ("encoder",))
    assert loaded.name == "lofipipe-losa"
    assert torch.equal(target.short[1].down.weight, source.short[1].down.weight)


def test_vit_g_has_2048_tokens_of_14_pixel_patches():
    with torch.device("meta"):
        model = build_encoder("vit_g").net
        tokens = model.tokens(torch.empty(1, 16, 3, 224, 224))
        # VideoMAE-v2's vit_giant_patch14_224 (mlp_ratio 48/11), as published.
        official = {
            key: torch.empty(value.shape)
            for key, value in _videomae_finetuned(1408, 40, 6144, patch=14).items()
        }
    assert tokens.shape == (1, 2048, 1408)
    assert official["patch_embed.proj.weight"].shape == (1408, 3, 2, 14, 14)
    assert load_weights(model, official, "vit_g.pth").name == "videomae-finetuned"
    assert model.patch_embed.proj.weight.shape == (1408, 3, 2, 14, 14)
    with torch.device("meta"):
        official["patch_embed.proj.weight"] = torch.empty(1408, 3, 2, 16, 16)
        fresh = build_encoder("vit_g").net
    with pytest.raises(InputError) as caught:
        load_weights(fresh, official, "vit_g16.pth")
    assert str(caught.value) == (
        "vit_g16.pth: patch_embed.proj.weight has shape (1408, 3, 2, 16, 16), the model "
        "expects (1408, 3, 2, 14, 14)"
    )


def test_inspect_names_layout_fitting_encoder_and_parameters(tmp_path):
    trained = _trained_r18().net.state_dict()
    torch.save(_tsm_release_layout(trained), tmp_path / "tsm.pth")
    report = inspect_checkpoint(str(tmp_path / "tsm.pth"), {})
    assert (report.layout, report.fits) == ("tsm-release", ("tsm_r18",))
    assert report.parameters == 11_176_512  # torchvision's ResNet-18 without fc
    assert report.ignored == {"classifier head": 2}
    lines = report.lines()
    assert lines[0].startswith("checkpoint  tsm.pth  sha256:")
    assert lines[1].startswith("layout      tsm-release: TSM release")
    assert lines[2:5] == [
        "fits        tsm_r18",
        "parameters  11,176,512 in 120 tensors",
        "ignored     2 keys: classifier head 2",
    ]
    torch.save({"model": _videomae_pretrained(_videomae_finetuned())}, tmp_path / "tiny.pth")
    report = inspect_checkpoint(str(tmp_path / "tiny.pth"), {})
    assert report.layout == "videomae-pretrained" and report.fits == ()
    assert report.lines()[2].startswith("fits        no encoder: tiny.pth: ")
    assert "\n" not in report.mismatch
