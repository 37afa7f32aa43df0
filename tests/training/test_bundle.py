"""The model bundle a head run leaves (runs/<run>/model/): it rebuilds the encoder that
made the features and the trained head, and refuses parts that do not fit each other."""

import hashlib
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from support.cli import fresh_root, run

from lofipipe.data.annotations import AnnotationIndex
from lofipipe.data.features import read_features
from lofipipe.data.snippets import SnippetReader
from lofipipe.errors import InputError
from lofipipe.layout import model_dir
from lofipipe.models.bundle import read_bundle
from lofipipe.storage import Store

SMALL = [
    *("--set", "train.head.dim=32", "--set", "train.head.levels=3"),
    *("--set", "train.min_steps=0", "--set", "train.epochs=2"),
]


@pytest.fixture(scope="module")
def trained(demo_shards, tmp_path_factory):
    """A ROOT with tiny's features and a head run `H` on them."""
    root = fresh_root(demo_shards, tmp_path_factory.mktemp("bundle"))
    output = run("extract", root, "--encoder", "tiny", "--schedule", "demo")
    fingerprint = re.search(r"^features (\w+): ", output, re.M).group(1)
    run("train", root, "--features", fingerprint, "--run", "H", *SMALL)
    return root, fingerprint


def test_a_head_run_leaves_a_bundle_that_remakes_its_features(trained):
    root, fingerprint = trained
    bundle = read_bundle(str(root / model_dir("H")))
    assert (bundle.encoder_name, bundle.losa, bundle.features) == ("tiny", False, fingerprint)
    assert bundle.labels == AnnotationIndex(Store(str(root))).label_names
    assert bundle.schedule.name == "demo" and bundle.preprocess.name == "squash"
    # The encoder is the one that made the features: the same values from the snippets.
    video = next(SnippetReader(Store(str(root)), "full").videos())
    with torch.no_grad():
        values = bundle.encoder()(video.frames).numpy()
    stored = read_features(Store(str(root)), fingerprint)[video.video_id][0]
    assert np.allclose(values, stored, atol=1e-5)
    # The head is the run's last one.
    checkpoint = sorted((root / "runs/H/checkpoints").glob("epoch-*.pt"))[-1]
    saved = torch.load(checkpoint, weights_only=True)["head"]
    for name, value in bundle.head().state_dict().items():
        assert torch.equal(value, saved[name]), name


def _copy(root, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(root / model_dir("H"), folder)
    return folder


def test_a_bundle_whose_parts_do_not_fit_is_refused(trained, tmp_path):
    root, _ = trained
    with pytest.raises(InputError, match="not a lofipipe model bundle"):
        read_bundle(str(tmp_path))
    # A weights file swapped for another: not the one bundle.json records.
    folder = _copy(root, tmp_path / "swapped")
    head = torch.load(folder / "head.pt", weights_only=True)
    head["head"]["classify.out.bias"] += 1.0
    buffer = io.BytesIO()
    torch.save(head, buffer)
    (folder / "head.pt").write_bytes(buffer.getvalue())
    with pytest.raises(InputError, match=r"head\.pt is not the file bundle\.json records"):
        read_bundle(str(folder))
    # Recorded, but for other labels: the head's classes are not the bundle's labels.
    folder = _copy(root, tmp_path / "labels")
    record = json.loads((folder / "bundle.json").read_text())
    record["labels"] = [*record["labels"], "extra"]
    (folder / "bundle.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="classes, the bundle .* labels") as refused:
        read_bundle(str(folder))
    assert "\n" not in str(refused.value)
    # An encoder of another architecture under the same record.
    folder = _copy(root, tmp_path / "encoder")
    record = json.loads((folder / "bundle.json").read_text())
    record["encoder"]["name"] = "tsm_r18"
    (folder / "bundle.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="do not fit each other: the head takes 128-d"):
        read_bundle(str(folder))
    # Every check passes for the bundle as written, its SHA-256s included.
    data = (root / model_dir("H") / "encoder.pt").read_bytes()
    record = json.loads((root / model_dir("H") / "bundle.json").read_text())
    assert record["encoder"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_checkpoint_changed_since_extraction_leaves_no_bundle_but_the_run(trained, tmp_path):
    root, _ = trained
    weights = tmp_path / "tiny.pt"
    shutil.copy(root / model_dir("H") / "encoder.pt", weights)
    output = run(
        "extract", root, "--encoder", "tiny", "--schedule", "demo", "--checkpoint", weights
    )
    fingerprint = re.search(r"^features (\w+): ", output, re.M).group(1)
    state = torch.load(weights, weights_only=True)
    state["encoder"] = {
        k: v + 1 if v.is_floating_point() else v for k, v in state["encoder"].items()
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights.write_bytes(buffer.getvalue())  # not the weights the features were made with
    run("train", root, "--features", fingerprint, "--run", "moved", *SMALL)
    assert (root / "runs/moved/predictions.json").exists()
    assert not (root / "runs/moved/model/bundle.json").exists()
    reason = (root / "runs/moved/model/not-bundled.txt").read_text()
    assert "is no longer the checkpoint the features were extracted with" in reason
