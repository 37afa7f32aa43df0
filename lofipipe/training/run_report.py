"""What a run leaves beside its checkpoints while it trains: `metrics.parquet` (a row per
step and per epoch) and `report.png` (its training curves). The HTML report that sums up
a finished run is `pipeline/run_page.py`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lofipipe.schemas.tables import METRICS
from lofipipe.storage import Store
from lofipipe.training.run_figures import png, training_curves


def write_metrics(root: Store, run: str, rows: Sequence[dict[str, Any]]) -> None:
    root.write_table(f"runs/{run}/metrics.parquet", METRICS.from_rows(rows))


def write_report_plot(root: Store, run: str, rows: Sequence[dict[str, Any]],
                      thresholds: Sequence[float]) -> None:
    """Loss, learning rate and validation mAP as a PNG."""
    root.write_bytes(f"runs/{run}/report.png", png(training_curves(run, rows, thresholds)))
