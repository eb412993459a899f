"""Training curves of one run as a PNG: loss and top-1 accuracy per epoch, training and validation."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)

from utils.atomic import atomic_output  # noqa: E402


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """Draw loss and top-1 accuracy against the epoch from log rows and write the PNG atomically."""
    epochs = [int(row["epoch"]) for row in rows]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("val", "--")):
        loss_axes.plot(epochs, [float(row[f"{split}_loss"]) for row in rows], style, marker=".", label=split)
        accuracy_axes.plot(epochs, [float(row[f"{split}_top1"]) for row in rows], style, marker=".", label=split)
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    accuracy_axes.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="top-1 accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_output(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=100)
    plt.close(figure)
