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


def test_shipped_texture_teacher_keeps_the_data_band_balance():
    path = kd.checkpoints.shipped("texture_teacher")
    meta = kd.checkpoints.metadata(path)
    assert meta["dataset"] == "textures" and meta["band_names"] == list(kd.textures.BANDS)
    teacher = kd.checkpoints.load(path).eval()
    with torch.no_grad():
        samples = teacher(teacher.sample_noise(400, torch.Generator().manual_seed(5))).numpy()
    real = kd.data.as_tensors(kd.data.load("textures", "test"))[0].numpy()
    bands = list(kd.textures.BANDS.values())
    got, want = _numpy_band_shares(samples, bands), _numpy_band_shares(real, bands)
    assert np.abs(got - want).max() < 0.08, (got, want)  # each band within 8 points of the data's share
    assert got.sum() > 0.9  # almost all energy inside the three texture bands, as in the data
