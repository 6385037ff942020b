"""The confusion matrix as a picture: for TensorBoard (an RGB array) and for ``sentex test`` (a PNG).

Drawn with matplotlib's object API and Agg canvas (no pyplot state, no display). matplotlib is the
``bench`` extra; without it :func:`confusion_image` raises ``ImportError`` and callers skip the picture
(the Markdown report still holds the matrix).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sentex.io.atomic import atomic_path


def _figure(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=float)
    # Colour by share of each gold row, so a rare class's errors show as clearly as a common one's.
    shares = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    size = 1.6 + 0.9 * len(labels)
    fig = Figure(figsize=(size + 1.2, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of gold row")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    for g in range(len(labels)):
        for p in range(len(labels)):
            colour = "white" if shares[g, p] > 0.5 else "black"
            ax.text(p, g, f"{int(counts[g, p])}\n{shares[g, p]:.0%}", ha="center", va="center", color=colour)
    fig.tight_layout()
    return fig


def confusion_image(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str = "") -> np.ndarray:
    """``(height, width, 3)`` uint8 picture of the matrix (rows gold, columns predicted, counts and row shares)."""
    fig = _figure(matrix, labels, title)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def write_confusion_png(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str = ""
) -> None:
    """Write the picture of :func:`confusion_image` as a PNG, atomically."""
    fig = _figure(matrix, labels, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
