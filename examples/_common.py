"""Helpers shared by the examples: command-line flags, data, batches, progress bars and plots.

Nothing here is specific to nnxlite. It keeps the three example scripts
focused on the model code; read it once, then ignore it.

The data never comes from the network:

* ``load_digits_split`` uses scikit-learn's bundled *digits* data set
  (1797 grey-scale 8x8 images of handwritten digits);
* ``stdlib_text`` reads Python source files that ship with the interpreter
  running the example.
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write PNG files; never open a window
import matplotlib.pyplot as plt  # noqa: E402  (re-exported: `from _common import plt`)
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "out"


# -- command line -----------------------------------------------------------------------------


def make_parser(description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the flags every example shares: --smoke, --out, --seed."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes that finish in a few seconds (used by the tests)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNG plot")
    parser.add_argument("--seed", type=int, default=0, help="seed for data shuffling and initialization")
    return parser


# -- data ------------------------------------------------------------------------------------------


def load_digits_split(
    test_size: float = 0.25, seed: int = 0, classes: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits data set as ``(x_train, y_train, x_test, y_test)``.

    Images are float32 in [0, 1] with shape ``(N, 8, 8, 1)`` (height, width,
    channels); labels are int32. The split is stratified, so every digit has
    the same share in train and test. ``classes`` keeps only those digits.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # pixel values are 0..16
    labels = digits.target.astype(np.int32)
    if classes is not None:
        keep = np.isin(labels, classes)
        images, labels = images[keep], labels[keep]
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed
    )
    return x_train, y_train, x_test, y_test


def few_per_class(x: np.ndarray, y: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``n`` randomly chosen examples of each label (a "few labels" training set)."""
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False) for c in np.unique(y)])
    keep.sort()
    return x[keep], y[keep]


def batch_indices(n: int, batch_size: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Endless mini-batch indices: each epoch is a fresh shuffle of ``range(n)``.

    Every batch has exactly ``batch_size`` rows (a short last batch is dropped)
    so that a compiled step never sees a new shape. If ``n < batch_size`` the
    whole (shuffled) set is one batch.
    """
    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, n)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def stdlib_text(max_chars: int) -> tuple[str, list[str]]:
    """Python source code from the standard library of the running interpreter.

    Reads the public top-level modules (``abc.py``, ``aifc.py``, ...) in sorted
    file-name order until ``max_chars`` characters are collected, and keeps
    ASCII only (the rare other character becomes ``?``). The same interpreter
    always gives the same text. Returns ``(text, file_names)``.
    """
    stdlib_dir = os.path.dirname(os.__file__)
    paths = sorted(
        p for p in glob.glob(os.path.join(stdlib_dir, "*.py")) if not os.path.basename(p).startswith("_")
    )
    parts, names, total = [], [], 0
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            source = f.read()
        source = source.encode("ascii", errors="replace").decode("ascii")
        parts.append(source)
        names.append(os.path.basename(path))
        total += len(source)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars], names


# -- progress and timing -------------------------------------------------------------------------


def progress(total: int, desc: str) -> tqdm:
    """A tqdm progress bar over ``range(total)`` (it goes to stderr)."""
    return tqdm(range(total), desc=desc, dynamic_ncols=True, leave=True)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


# -- plots -----------------------------------------------------------------------------------------


def save_figure(fig: plt.Figure, out_dir: Path, name: str) -> Path:
    """Save ``fig`` as ``out_dir/name`` (creating the folder), close it, print the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"saved plot: {path}")
    return path


def plot_accuracy_curves(curves: dict, *, xlabel: str, ylabel: str, title: str, out_dir: Path, name: str) -> Path:
    """One line per ``{label: (steps, accuracies)}`` on a 0-1 axis, saved with :func:`save_figure`."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (steps, accuracies) in curves.items():
        ax.plot(steps, accuracies, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    return save_figure(fig, out_dir, name)
