import hashlib
import urllib.error

import numpy as np
import pytest
import torch

import kdlab as kd
from kdlab.data import DatasetUnavailable


@pytest.mark.parametrize("split,n", [("train", 4500), ("test", 500)])
def test_mnist5k_shapes_ranges_and_balanced_split(split, n):
    ds = kd.data.load("mnist5k", split)
    assert len(ds) == n
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    images, labels = kd.data.as_tensors(ds)
    assert images.min() == -1.0 and images.max() == 1.0  # 0 and 255 both occur in MNIST
    # pixels are p / 127.5 - 1 for integer p: undo and check integrality
    p = (images + 1) * 127.5
    assert torch.allclose(p, p.round(), atol=1e-4)
    assert torch.bincount(labels, minlength=10).tolist() == [n // 10] * 10  # stratified
    assert 0 <= int(label) <= 9


def test_mnist5k_splits_do_not_overlap():
    def digests(split):
        x, _ = kd.data.as_tensors(kd.data.load("mnist5k", split))
        return {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in x}
    assert not digests("train") & digests("test")


def test_unknown_name_and_split_list_valid_values():
    with pytest.raises(ValueError, match="mnist5k") as e:
        kd.data.load("imagenet")
    assert "name='imagenet'" in str(e.value) and "cifar10" in str(e.value)
    with pytest.raises(ValueError, match="'train', 'test'"):
        kd.data.load("mnist5k", "validation")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_torchvision_dataset_offline_error(name, tmp_path):
    with pytest.raises(DatasetUnavailable) as e:
        kd.data.load(name, root=tmp_path)
    msg = str(e.value)
    assert "download=True" in msg and "mnist5k" in msg and name in msg


@pytest.mark.parametrize("name,module", [("mnist", "mnist"), ("cifar10", "cifar")])
def test_download_without_network_gives_clear_error(name, module, tmp_path, monkeypatch, capsys):
    import importlib

    mod = importlib.import_module(f"torchvision.datasets.{module}")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(mod, "download_and_extract_archive", no_network)
    with pytest.raises(DatasetUnavailable) as e:
        kd.data.load(name, root=tmp_path, download=True)
    assert "mnist5k" in str(e.value) and "download" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no raw urllib traceback chained


def test_quantize_dequantize_round_trip():
    levels = torch.arange(16).view(1, 1, 4, 4)
    assert torch.equal(kd.data.quantize(kd.data.dequantize(levels, 16), 16), levels)
    x = torch.tensor([-1.0, -0.99, 0.0, 0.99, 1.0, 3.0])
    assert kd.data.quantize(x, 256).tolist() == [0, 1, 128, 254, 255, 255]


def _band_energy_share(img: np.ndarray, lo: float, hi: float) -> float:
    """Independent check in float64 NumPy: share of (non-DC) power with radial frequency in [lo, hi)."""
    power = np.abs(np.fft.fft2(img - img.mean())) ** 2
    f = np.fft.fftfreq(img.shape[0])
    r = np.hypot(f[:, None], f[None, :])
    return power[(r >= lo - 1 / 28) & (r < hi + 1 / 28)].sum() / power.sum()  # one bin of leakage allowed


def test_textures_have_energy_in_their_band():
    ds = kd.data.load("textures", "train")
    images, labels = kd.data.as_tensors(ds)
    assert images.shape == (3600, 1, 28, 28) and ds.classes == ["low", "mid", "high"]
    assert images.abs().max() <= 1.0 + 1e-6
    assert torch.bincount(labels).tolist() == [1200, 1200, 1200]
    kinds = {(ds.classes[b], k) for b, k in zip(labels.tolist(), ds.kinds)}
    assert len(kinds) == 9 and sum(1 for k in ds.kinds if k == "noise") == 1200
    for i in range(0, 300, 7):
        lo, hi = kd.textures.BANDS[ds.classes[labels[i]]]
        share = _band_energy_share(images[i, 0].double().numpy(), lo, hi)
        assert share > 0.85, (i, ds.kinds[i], ds.classes[labels[i]], share)


def test_textures_bands_are_ordered_by_frequency():
    images, labels = kd.data.as_tensors(kd.data.load("textures", "test"))
    f = np.fft.fftfreq(28)
    r = np.hypot(f[:, None], f[None, :])
    power = np.abs(np.fft.fft2(images[:, 0].double().numpy())) ** 2
    mean_freq = (power * r).sum((1, 2)) / power.sum((1, 2))
    by_band = [mean_freq[labels.numpy() == b].mean() for b in range(3)]
    assert by_band[0] < by_band[1] < by_band[2]


def test_textures_are_seeded():
    a, la, _ = kd.textures.make_textures(12, seed=3)
    b, lb, _ = kd.textures.make_textures(12, seed=3)
    c, _, _ = kd.textures.make_textures(12, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    train, _ = kd.data.as_tensors(kd.data.load("textures", "train"))
    test, _ = kd.data.as_tensors(kd.data.load("textures", "test"))
    assert not torch.equal(train[:10], test[:10])
