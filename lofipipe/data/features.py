"""The feature sets under ROOT (`features/<fingerprint>/`): what each holds, and one set's
features read back whole."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from lofipipe.layout import (
    FEATURES_DIR,
    LINEAGE_NAME,
    PART_PATTERN,
    STATS_PATTERN,
    STATS_SUFFIX,
    feature_dir,
    parquet_of,
)
from lofipipe.schemas.tables import FEATURES
from lofipipe.storage import Store

# The `lineage` of a feature set made by another tool (`lofipipe features import`).
IMPORTED = "imported"


def list_features(root: Store) -> list[dict[str, Any]]:
    """Each fingerprint's lineage with its video count and bytes."""
    out = []
    for name in root.list(FEATURES_DIR, pattern=LINEAGE_NAME, recursive=True):
        folder = name.rsplit("/", 1)[0]
        lineage = json.loads(root.read_text(name))
        parts = root.list_detailed(folder, pattern=PART_PATTERN)
        videos = sum(
            len(json.loads(root.read_text(p))["videos"])
            for p, _ in parts
            if p.endswith(STATS_SUFFIX)
        )
        out.append(
            {
                **lineage,
                "videos": videos,
                "bytes": sum(int(info.get("size", 0)) for _, info in parts),
            }
        )
    return out


def preprocess_preset_of(lineage: Mapping[str, Any]) -> str:
    """The preprocessing preset a feature set's lineage names ("-" in lineages written
    before lofipipe kept it)."""
    preprocess = lineage.get("preprocess")
    return str(preprocess.get("preset", "-")) if isinstance(preprocess, Mapping) else "-"


def origin_of(lineage: Mapping[str, Any]) -> str:
    """Where a feature set's values come from, for listings: the checkpoint its encoder
    loaded, or the files it was imported from."""
    if lineage.get("lineage") == IMPORTED:
        return f"imported from {lineage['source']}"
    return f"checkpoint {lineage.get('checkpoint') or '-'}"


def read_features(root: Store, fingerprint: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """video_id -> ((T, C) features, (T, 2) snippet start/end) of one fingerprint."""
    out = {}
    for name in root.list(feature_dir(fingerprint), pattern=STATS_PATTERN):
        table = FEATURES.check(root.read_table(parquet_of(name)), root.url_of(name))
        for row in table.to_pylist():
            values = np.asarray(row["values"], np.float32).reshape(row["num_snippets"], row["dim"])
            out[row["video_id"]] = (
                values,
                np.stack([row["snippet_start"], row["snippet_end"]], axis=1),
            )
    return out
