"""The shipped texture teacher (notebook 05) against the band balance of its training data
(kdlab.textures), with an independent NumPy spectrum written here."""
import numpy as np
import torch

import kdlab as kd


def _numpy_band_shares(images: np.ndarray, bands) -> np.ndarray:
    """Independent float64 reference: share of the non-DC FFT energy in each radial band."""
    x = images - images.mean(axis=(-2, -1), keepdims=True)
    power = (np.abs(np.fft.fft2(x)) ** 2).sum(axis=tuple(range(x.ndim - 2)))
    f = np.fft.fftfreq(x.shape[-1])
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return np.array([power[(r >= lo) & (r < hi)].sum() for lo, hi in bands]) / power.sum()


def test_shipped_texture_teacher_puts_each_bands_energy_in_that_band():
    """The conditional teacher (class = 3 band + kind) asked for band b puts most of its energy in b,
    as the data of band b does (numpy FFT here, independent of kdlab's metrics)."""
    path = kd.checkpoints.shipped("texture_teacher")
    meta = kd.checkpoints.metadata(path)
    assert meta["dataset"] == "textures" and meta["band_names"] == list(kd.textures.BANDS)
    teacher = kd.checkpoints.load(path).eval()
    real, real_band = kd.data.as_tensors(kd.data.load("textures", "test"))
    bands = list(kd.textures.BANDS.values())
    for b in range(len(bands)):
        labels = torch.arange(300) % 3 + 3 * b  # the band's three kinds
        with torch.no_grad():
            samples = teacher(teacher.sample_noise(300, torch.Generator().manual_seed(5), labels=labels)).numpy()
        got, want = _numpy_band_shares(samples, bands), _numpy_band_shares(real[real_band == b].numpy(), bands)
        assert want[b] > 0.8 and got[b] > 0.7 and got.argmax() == b, (b, got, want)
