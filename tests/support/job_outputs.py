"""What a job leaves under ROOT, made comparable between two runs of the same graph:
every file by path, with what may differ between equal runs taken out (wall times, the
node that did the work, the command line) and ROOT's own URL written as `<root>`."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from lofipipe.storage import Store

# Written afresh by every run: timing records and the pages drawn from them.
VOLATILE_FILES = ("_lofipipe/stages/", "/report.html", "/report.png")
VOLATILE_KEYS = {"seconds", "probe_seconds", "node", "finished_at", "command"}


def _clean(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v, root) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        # A resumed training run records where it resumed; an uninterrupted one does not.
        return [
            _clean(v, root)
            for v in value
            if not (isinstance(v, dict) and v.get("kind") == "resume")
        ]
    if isinstance(value, str):
        return value.replace(root, "<root>")
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), tuple(value.shape), value.numpy().tobytes())
    if isinstance(value, pa.Table):
        return _clean(value.to_pylist(), root)
    return value


def _content(store: Store, path: str) -> Any:
    if path.endswith(".parquet"):
        found = pq.read_table(io.BytesIO(store.read_bytes(path)))
    elif path.endswith(".json"):
        found = json.loads(store.read_text(path))
    elif path.endswith(".yaml"):  # resolved configs: the settings, not where they ran
        settings = yaml.safe_load(store.read_text(path)) or {}
        found = {k: v for k, v in settings.items() if k not in ("job", "ray")}
    elif path.endswith(".pt"):
        found = torch.load(io.BytesIO(store.read_bytes(path)), weights_only=True)
    else:
        return store.read_bytes(path)
    return _clean(found, store.url)


def job_outputs(store: Store) -> dict[str, Any]:
    """{relative path: comparable content} of everything under the store's root."""
    return {
        path: _content(store, path)
        for path in store.list("", recursive=True)
        if not any(part in path for part in VOLATILE_FILES)
    }


def differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The paths that only one side has or whose contents differ."""
    return sorted(
        path for path in first.keys() | second.keys() if first.get(path) != second.get(path)
    )


def row_changes(clean: dict[str, Any], other: dict[str, Any]) -> tuple[int, int]:
    """Rows of the clean run's Parquet files missing from `other`, and rows too many."""
    lost = duplicated = 0
    for path, rows in clean.items():
        if path.endswith(".parquet"):
            found = other.get(path, [])
            lost += max(0, len(rows) - len(found))
            duplicated += max(0, len(found) - len(rows))
    return lost, duplicated
