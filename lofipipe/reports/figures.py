"""The figures of a training run, drawn with matplotlib (no display needed): the training
curves that `report.png` holds while a run trains, and the scores the HTML report adds."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # workers and servers have no display

from matplotlib import pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402

from lofipipe.layout import report_plot_path  # noqa: E402
from lofipipe.storage import Store  # noqa: E402


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes; closes it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def training_curves(
    run: str, rows: Sequence[Mapping[str, Any]], thresholds: Sequence[float]
) -> Figure:
    """Loss per step, learning rate per step and validation mAP per epoch, side by side."""
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    figure, (loss, rate, score) = plt.subplots(1, 3, figsize=(15, 4))
    x = [r["step"] for r in steps]
    for key, label in (
        ("loss", "total"),
        ("cls_loss", "classification"),
        ("reg_loss", "regression"),
    ):
        loss.plot(x, [r[key] for r in steps], lw=1, label=label)
    loss.set(xlabel="step", ylabel="loss", title=f"{run}: training loss")
    loss.legend()
    rate.plot(x, [r["lr"] for r in steps], lw=1, color="tab:purple")
    rate.set(xlabel="step", ylabel="learning rate", title="learning rate")
    rate.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    x = [r["epoch"] for r in epochs]
    score.plot(x, [100 * r["val_average_map"] for r in epochs], marker="o", label="average")
    if thresholds:
        score.plot(
            x,
            [100 * r["val_map"][0] for r in epochs],
            marker=".",
            label=f"tIoU {thresholds[0]:.2f}",
        )
    score.set(xlabel="epoch", ylabel="mAP (%)", title="validation mAP", ylim=(0, 100))
    score.legend()
    figure.tight_layout()
    return figure


def map_per_tiou(evaluation: Mapping[str, Any]) -> Figure:
    """Bars of mAP at each tIoU threshold, with their average as a line."""
    keys = list(evaluation["mAP"])
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.bar(keys, [100 * evaluation["mAP"][k] for k in keys], color="tab:blue")
    axes.axhline(
        100 * evaluation["average_mAP"],
        color="tab:red",
        lw=1,
        label=f"average {100 * evaluation['average_mAP']:.2f}",
    )
    axes.set(
        xlabel="tIoU threshold", ylabel="mAP (%)", ylim=(0, 100), title="mAP per tIoU threshold"
    )
    axes.tick_params(axis="x", rotation=45)
    axes.legend()
    figure.tight_layout()
    return figure


def per_class_ap(evaluation: Mapping[str, Any]) -> Figure:
    """Horizontal bars of each class's AP averaged over the thresholds."""
    classes = sorted(evaluation["per_class"])
    values = [100 * evaluation["per_class"][c]["average_AP"] for c in classes]
    figure, axes = plt.subplots(figsize=(7, 0.6 + 0.3 * max(len(classes), 1)))
    axes.barh(classes, values, color="tab:green")
    axes.invert_yaxis()
    axes.set(xlabel="average AP (%)", xlim=(0, 100), title="AP per class")
    figure.tight_layout()
    return figure


def write_report_plot(
    root: Store, run: str, rows: Sequence[dict[str, Any]], thresholds: Sequence[float]
) -> None:
    """`report.png` of a run that trains: loss, learning rate and validation mAP."""
    root.write_bytes(report_plot_path(run), png(training_curves(run, rows, thresholds)))
