"""Loading encoder weights in the published layouts, from local storage and S3."""

import io
import os
from dataclasses import replace

import pytest
import torch
from support.reliability import record

from lofipipe.errors import InputError
from lofipipe.models.registry import (
    ENCODERS,
    architecture_digest,
    build_encoder,
    encoder_fingerprint,
)
from lofipipe.models.weights import load_weights, read_checkpoint
from lofipipe.storage import Store


def _trained_r18():
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


@pytest.mark.parametrize("layout", ["plain", "tsm", "videomae", "lofipipe"])
def test_published_layouts_load(tmp_path, layout):
    trained = _trained_r18().net.state_dict()
    checkpoint = {
        "plain": {**trained, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)},
        "tsm": _tsm_release_layout(trained),
        "videomae": {"module": trained, "epoch": 799},
        "lofipipe": {"encoder": trained, "step": torch.tensor(10)},
    }[layout]
    torch.save(checkpoint, tmp_path / "w.pth")
    state, digest = read_checkpoint(str(tmp_path / "w.pth"), {})
    assert len(digest) == 64
    fresh = build_encoder("tsm_r18")
    load_weights(fresh.net, state, "w.pth")
    for key, value in fresh.net.state_dict().items():
        assert torch.equal(value, trained[key]), key


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
