"""A training run's records under ROOT: its metrics table (a row per step, per epoch and
per resume) and the names of the runs there are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lofipipe.layout import RUNS_DIR, metrics_path
from lofipipe.schemas.tables import METRICS
from lofipipe.storage import Store


def write_metrics(root: Store, run: str, rows: Sequence[dict[str, Any]]) -> None:
    root.write_table(metrics_path(run), METRICS.from_rows(rows))


def read_metrics(
    root: Store, run: str, kinds: Sequence[str] = ("step", "epoch", "resume")
) -> list[dict[str, Any]]:
    """The run's metrics rows of these kinds, in order (none before its first epoch)."""
    path = metrics_path(run)
    if not root.exists(path):
        return []
    rows = METRICS.check(root.read_table(path), root.url_of(path)).to_pylist()
    return [row for row in rows if row["kind"] in kinds]


def run_names(root: Store) -> list[str]:
    """The runs under ROOT (those that saved their config), sorted."""
    return sorted(
        {path.split("/")[1] for path in root.list(RUNS_DIR, pattern="config.yaml", recursive=True)}
    )
