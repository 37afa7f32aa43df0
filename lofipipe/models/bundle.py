"""A trained model as it leaves the pipeline: a head run's `runs/<run>/model/`.

    bundle.json   what the parts are and how they fit: the encoder (registry name, LoSA,
                  preprocessing preset, precision, the fingerprint of the features the
                  head was trained on), the schedule (sampling, fps, stride, fidelities),
                  the head (its config, post-processing included, and input width), the
                  label names, the window, and the SHA-256 of each weights file
    encoder.pt    the encoder's weights in lofipipe's checkpoint layout ({"encoder": ...})
    head.pt       the head's weights ({"head": ...}; the averaged ones with train.ema_decay)

bundle.json is written last, so a folder without it is not a bundle. Reading loads the
weights with `weights_only` and refuses, with one line, a bundle whose parts do not fit
each other: a weights file that is not the one recorded, an encoder whose width is not
the head's input, a head whose classes are not the labels, or a schedule whose snippets
are not the encoder's.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import torch

from lofipipe import __version__
from lofipipe.errors import InputError, one_line
from lofipipe.models.registry import ENCODERS, Encoder, build_encoder
from lofipipe.models.tal_head import TALHead
from lofipipe.schemas.config import HeadConfig, build, config_to_dict
from lofipipe.schemas.preprocess import Preprocess, preprocess_preset
from lofipipe.schemas.schedule import Schedule, schedule_from_record
from lofipipe.storage import Store

FORMAT, VERSION = "lofipipe-model", 1
BUNDLE_JSON, ENCODER_PT, HEAD_PT = "bundle.json", "encoder.pt", "head.pt"
NOT_BUNDLED = "not-bundled.txt"  # instead of a bundle: why the run could not leave one


@dataclass
class ModelBundle:
    """Encoder and head with everything that says how to feed them."""

    encoder_name: str
    losa: bool
    preprocess: Preprocess
    precision: str  # the features' (extract.precision, resolved)
    features: str  # the fingerprint of the features the head was trained on
    schedule: Schedule
    head_config: HeadConfig
    labels: list[str]
    window: int  # stride sampling: snippets per window the head takes; 0: whole videos
    encoder_state: dict[str, torch.Tensor]
    head_state: dict[str, torch.Tensor]
    digest: str = ""  # read_bundle: the SHA-256 of bundle.json, which names the whole bundle

    @property
    def in_dim(self) -> int:
        """The width of the features the head takes."""
        return int(self.head_state["embed.0.conv.weight"].shape[1])

    def encoder(self) -> Encoder:
        """The encoder with its weights (in evaluation mode, on the CPU)."""
        encoder = build_encoder(self.encoder_name, self.losa, self.preprocess)
        encoder.net.load_state_dict(self.encoder_state)
        return encoder.eval()

    def head(self) -> TALHead:
        """The head with its weights (in evaluation mode, on the CPU)."""
        head = TALHead.from_config(self.in_dim, len(self.labels), self.head_config)
        head.load_state_dict(self.head_state)
        return head.eval()


def _saved(value: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(store: Store, folder: str, bundle: ModelBundle) -> None:
    """Writes `bundle` under `folder` of `store`, bundle.json last."""
    encoder = _saved(
        {
            "encoder": bundle.encoder_state,
            "lofipipe": {"encoder": bundle.encoder_name, "schedule": bundle.schedule.name},
        }
    )
    head = _saved({"head": bundle.head_state})
    record = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": {
            "name": bundle.encoder_name,
            "losa": bundle.losa,
            "preprocess": bundle.preprocess.name,
            "precision": bundle.precision,
            "features": bundle.features,
            "sha256": _sha256(encoder),
        },
        "schedule": bundle.schedule.record(),
        "head": {"config": config_to_dict(bundle.head_config), "sha256": _sha256(head)},
        "labels": bundle.labels,
        "window": bundle.window,
        "lofipipe_version": __version__,
    }
    store.write_bytes(f"{folder}/{ENCODER_PT}", encoder)
    store.write_bytes(f"{folder}/{HEAD_PT}", head)
    store.write_text(f"{folder}/{BUNDLE_JSON}", json.dumps(record, indent=1))


def read_bundle(url: str, options: dict[str, Any] | None = None) -> ModelBundle:
    """The bundle at folder `url` (any storage), checked whole.

    Raises:
        InputError: not a bundle, or its parts do not fit each other (one line).
    """
    store = Store(url, options or {})
    if not store.exists(BUNDLE_JSON):
        raise InputError(
            f"{url}: not a lofipipe model bundle (no {BUNDLE_JSON}; a head run leaves one "
            f"in ROOT/runs/<run>/model)"
        )
    text = store.read_bytes(BUNDLE_JSON)
    record = json.loads(text)
    if record.get("format") != FORMAT or record.get("version") != VERSION:
        raise InputError(
            f"{url}: a bundle of format {record.get('format')!r} version "
            f"{record.get('version')!r}; this lofipipe reads {FORMAT!r} version {VERSION}"
        )

    def weights(name: str, part: dict[str, Any], key: str) -> dict[str, torch.Tensor]:
        data = store.read_bytes(name)
        if _sha256(data) != part["sha256"]:
            raise InputError(
                f"{store.url_of(name)} is not the file {BUNDLE_JSON} records (its SHA-256 "
                f"differs): the bundle's parts do not fit each other"
            )
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)[key]

    encoder = record["encoder"]
    bundle = ModelBundle(
        encoder_name=encoder["name"],
        losa=encoder["losa"],
        preprocess=preprocess_preset(encoder["preprocess"]),
        precision=encoder["precision"],
        features=encoder["features"],
        schedule=schedule_from_record(record["schedule"], f"{url}/{BUNDLE_JSON}"),
        head_config=build(HeadConfig, record["head"]["config"]),
        labels=list(record["labels"]),
        window=int(record["window"]),
        encoder_state=weights(ENCODER_PT, encoder, "encoder"),
        head_state=weights(HEAD_PT, record["head"], "head"),
        digest=_sha256(text),
    )
    _check_fit(bundle, url)
    return bundle


def _check_fit(bundle: ModelBundle, url: str) -> None:
    """Refuses a bundle whose encoder, schedule, head and labels do not fit together."""
    if bundle.encoder_name not in ENCODERS:
        raise InputError(f"{url}: unknown encoder {bundle.encoder_name!r}")
    spec = ENCODERS[bundle.encoder_name]
    if spec.frames != bundle.schedule.full.frames:
        raise InputError(
            f"{url}: {spec.name} takes {spec.frames}-frame snippets, the bundle's schedule "
            f"{bundle.schedule.full.frames}"
        )
    with torch.device("meta"):  # shapes only
        encoder = build_encoder(bundle.encoder_name, bundle.losa, bundle.preprocess)
        classes = bundle.head_state["classify.out.bias"].shape[0]
        head = TALHead.from_config(bundle.in_dim, classes, bundle.head_config)
    problems = []
    if bundle.in_dim != encoder.dim:
        problems.append(
            f"the head takes {bundle.in_dim}-d features, {spec.name} makes {encoder.dim}"
        )
    if classes != len(bundle.labels):
        problems.append(f"the head has {classes} classes, the bundle {len(bundle.labels)} labels")
    for name, part, state in (
        ("encoder", encoder.net, bundle.encoder_state),
        ("head", head, bundle.head_state),
    ):
        try:
            part.load_state_dict(state, assign=True)
        except RuntimeError as error:
            problems.append(f"the {name} weights do not fit its architecture ({one_line(error)})")
    if problems:
        raise InputError(f"{url}: the bundle's parts do not fit each other: {problems[0]}")
