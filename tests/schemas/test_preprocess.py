"""Preprocessing presets and the schedule a lineage keeps."""

import json

import pytest

from lofipipe.errors import ConfigError
from lofipipe.schemas.preprocess import PREPROCESS_PRESETS, presets_with
from lofipipe.schemas.schedule import (
    PRESETS,
    Fidelity,
    Schedule,
    schedule_from_lineage,
    schedule_from_record,
    snippet_content,
)


def test_tsm_test_resizes_the_short_side_and_crops_the_centre():
    tsm = PREPROCESS_PRESETS["tsm-test"]
    # MMAction2 at 224: short side 256, long side int(long * 256 / short + 0.5), crop 224.
    assert tsm.geometry(320, 240, 224) == (341, 256, 58, 16)
    assert tsm.geometry(640, 360, 224) == (455, 256, 115, 16)
    assert tsm.geometry(240, 320, 224) == (256, 341, 16, 58)  # portrait (upright)
    assert tsm.geometry(320, 240, 112) == (171, 128, 29, 8)  # short side round(S*256/224)
    assert PREPROCESS_PRESETS["squash"].geometry(320, 240, 64) == (64, 64, 0, 0)


def test_presets_normalize_as_published():
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert PREPROCESS_PRESETS["tsm-test"].normalization_for(*imagenet) == imagenet
    assert PREPROCESS_PRESETS["videomaev2-tad"].normalization_for(*imagenet) == (
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
    )
    # squash and videomaev2-tad resize alike: their shards are the same snippets.
    assert presets_with(PREPROCESS_PRESETS["videomaev2-tad"].spatial_content) == [
        "squash",
        "videomaev2-tad",
    ]


def _file_schedule():
    return Schedule(
        "mine",
        Fidelity("full", 6, 2, 32),
        (Fidelity("low", 3, 2, 16, batch_size=3),),
        cycle="short",
    )


def test_the_lineage_keeps_the_whole_schedule():
    schedule = _file_schedule()
    lineage = json.loads(json.dumps(schedule.lineage("low", "raw", {"spatial": "squash"})))
    assert schedule_from_lineage(lineage) == schedule
    assert schedule_from_record(schedule.record()) == schedule
    # Batch sizes and the other fidelities change no snippet: not part of what must match.
    other = Schedule("mine", Fidelity("full", 6, 2, 32), (Fidelity("low", 3, 2, 16),))
    assert snippet_content(other.lineage("low", "raw")) == snippet_content(
        schedule.lineage("low", "raw")
    )


def test_an_old_lineage_names_a_preset():
    assert schedule_from_lineage({"schedule": "demo"}) == PRESETS["demo"]
    with pytest.raises(ConfigError, match="'mine.yaml', which is no preset"):
        schedule_from_lineage({"schedule": "mine.yaml"})
