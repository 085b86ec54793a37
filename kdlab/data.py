"""Datasets, offline first.

``load(name, split)`` returns a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs, images
float32 ``[C, H, W]`` in [-1, 1]:

=================  =======  ===========  ===============================================
name               shape    splits       source
=================  =======  ===========  ===============================================
``mnist5k``        1x28x28  train 4500,  bundled ``data/mnist5k.npz`` (see data/README.md)
                            test 500
``textures``       1x28x28  train 3600,  procedural, seeded (``kdlab.textures``)
                            test 900
``mnist``          1x28x28  train, test  torchvision, ``download=True`` needs a network
``fashion-mnist``  1x28x28  train, test  torchvision, ``download=True`` needs a network
``cifar10``        3x32x32  train, test  torchvision, ``download=True`` needs a network
=================  =======  ===========  ===============================================
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from . import textures
from .paths import data_root
from .utils import check_choice

NAMES = ("mnist5k", "textures", "mnist", "fashion-mnist", "cifar10")
SPLITS = ("train", "test")
_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
_TEXTURE_SIZES = {"train": (3600, 0), "test": (900, 1)}  # split -> (count, seed)


class DatasetUnavailable(RuntimeError):
    """A dataset is not on disk and could not be downloaded."""


def to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1]: ``x = p / 127.5 - 1``."""
    return images_uint8.float() / 127.5 - 1.0


def quantize(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Float images in [-1, 1] -> integer levels ``round((x + 1) / 2 * (levels - 1))`` (int64)."""
    return torch.round((images.clamp(-1, 1) + 1) / 2 * (levels - 1)).long()


def dequantize(levels_idx: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels 0..levels-1 -> float images in [-1, 1] (inverse of :func:`quantize`)."""
    return levels_idx.float() / (levels - 1) * 2 - 1


class ImageTensorDataset(TensorDataset):
    """``TensorDataset`` of (images ``[N, C, H, W]`` float32 in [-1, 1], labels ``[N]`` int64) that
    also exposes ``images``, ``labels`` and ``classes`` (label names)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], name: str = ""):
        super().__init__(images, labels)
        self.images, self.labels, self.classes, self.name = images, labels, classes, name

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"ImageTensorDataset({self.name!r}, n={n}, image=[{c}, {h}, {w}], classes={len(self.classes)})"


def _load_mnist5k(split: str, root: Path) -> ImageTensorDataset:
    path = root / "mnist5k.npz"
    if not path.exists():
        raise DatasetUnavailable(
            f"bundled file {path} is missing; it ships with the kdlab repository (data/mnist5k.npz). "
            "Reclone, or rebuild it with data/make_mnist5k.py as data/README.md explains.")
    with np.load(path, allow_pickle=False) as z:
        images = torch.from_numpy(z[f"{split}_images"].copy())
        labels = torch.from_numpy(z[f"{split}_labels"].astype(np.int64))
    return ImageTensorDataset(to_unit_range(images)[:, None], labels, [str(d) for d in range(10)], "mnist5k")


def _load_textures(split: str) -> ImageTensorDataset:
    n, seed = _TEXTURE_SIZES[split]
    images, labels, kinds = textures.make_textures(n, size=28, seed=seed)
    ds = ImageTensorDataset(images, labels, list(textures.BANDS), "textures")
    ds.kinds = kinds
    return ds


def _load_torchvision(name: str, split: str, root: Path, download: bool) -> Dataset:
    import torchvision  # imported when first needed: it takes a second, and the bundled data do not need it
    from torchvision import transforms

    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    folder = root / "torchvision" / name
    hint = (f"Download it once with kdlab.data.load({name!r}, download=True) on a machine with internet "
            f"access (files go to {folder}), or use the bundled offline dataset 'mnist5k'.")
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(0.5, 0.5)])  # [0,1] -> [-1,1]
    kwargs = {"train": split == "train"}
    try:
        return cls(str(folder), transform=tf, download=download, **kwargs)
    except RuntimeError as e:
        if not download:
            raise DatasetUnavailable(f"dataset {name!r} ({split}) is not in {folder}. {hint}") from None
        raise DatasetUnavailable(f"dataset {name!r} could not be prepared in {folder}: {e}. {hint}") from None
    except OSError as e:  # URLError, socket errors, DNS failures: no network
        raise DatasetUnavailable(f"dataset {name!r} could not be downloaded (no network? {e}). {hint}") from None


def load(name: str = "mnist5k", split: str = "train", root: str | os.PathLike | None = None,
         download: bool = False) -> Dataset:
    """Dataset ``name``/``split`` as ``(image [C, H, W] float32 in [-1, 1], label int)`` pairs.

    ``root`` defaults to :func:`kdlab.paths.data_root` (``$KDLAB_DATA`` or the repository's ``data/``). The torchvision
    datasets are read from ``<root>/torchvision/<name>``; with ``download=False`` (the default) a
    missing dataset raises :class:`DatasetUnavailable` that says how to download it.
    """
    check_choice("name", name, NAMES)
    check_choice("split", split, SPLITS)
    root = Path(root) if root is not None else data_root()
    if name == "mnist5k":
        return _load_mnist5k(split, root)
    if name == "textures":
        return _load_textures(split)
    return _load_torchvision(name, split, root, download)


def as_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a dataset as ``(images [N, C, H, W], labels [N])`` tensors (stacked once; the bundled
    datasets already hold them)."""
    if isinstance(dataset, ImageTensorDataset):
        return dataset.images, dataset.labels
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.as_tensor(labels)
