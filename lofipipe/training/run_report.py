"""What a run leaves beside its checkpoints: `metrics.parquet` (a row per step and per
epoch) and `report.png` (the loss per step and the validation mAP per epoch)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from lofipipe.schemas.tables import METRICS
from lofipipe.storage import Store


def write_metrics(root: Store, run: str, rows: Sequence[dict[str, Any]]) -> None:
    root.write_table(f"runs/{run}/metrics.parquet", METRICS.from_rows(rows))


def write_report_plot(root: Store, run: str, rows: Sequence[dict[str, Any]],
                      thresholds: Sequence[float]) -> None:
    """Loss per step (left) and validation mAP per epoch (right) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    from matplotlib import pyplot as plt

    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label="loss")
    left.plot([r["step"] for r in steps], [r["cls_loss"] for r in steps], lw=1,
              label="classification")
    left.plot([r["step"] for r in steps], [r["reg_loss"] for r in steps], lw=1,
              label="regression")
    left.set(xlabel="step", ylabel="loss", title=f"{run}: training loss")
    left.legend()
    x = [r["epoch"] for r in epochs]
    right.plot(x, [100 * r["val_average_map"] for r in epochs], marker="o", label="average")
    if thresholds:
        first = [100 * r["val_map"][0] for r in epochs]
        right.plot(x, first, marker=".", label=f"tIoU {thresholds[0]:.2f}")
    right.set(xlabel="epoch", ylabel="mAP (%)", title="validation mAP", ylim=(0, 100))
    right.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    root.write_bytes(f"runs/{run}/report.png", buffer.getvalue())
