"""The shipped FID classifier and reference statistics."""
import warnings

import pytest
import torch

import kdlab as kd
from kdlab.evaluation import fid


@pytest.fixture(scope="module")
def scorer():
    return fid.FID.load()


@pytest.fixture(scope="module")
def split():
    train_x, _ = kd.data.as_tensors(kd.data.load("mnist5k", "train"))
    test_x, test_y = kd.data.as_tensors(kd.data.load("mnist5k", "test"))
    return train_x, test_x, test_y


def test_classifier_metadata_matches_a_fresh_measurement(scorer, split):
    _, test_x, test_y = split
    meta = scorer.classifier.checkpoint_metadata["metrics"]
    acc = fid.accuracy(scorer.classifier, test_x, test_y)
    assert acc == pytest.approx(meta["heldout_accuracy"], abs=0.003) and acc > 0.95  # 1 digit of 500 may flip
    assert scorer(test_x) == pytest.approx(meta["fid_heldout500_vs_train"], rel=1e-3)


def test_fid_of_the_reference_set_itself_is_zero(scorer, split):
    train_x, _, _ = split
    assert scorer(train_x) == pytest.approx(0.0, abs=1e-4)


def test_fid_grows_with_corruption(scorer, split):
    _, test_x, _ = split
    g = torch.Generator().manual_seed(0)
    clean = scorer(test_x)
    noisy = [scorer((test_x + s * torch.randn(test_x.shape, generator=g)).clamp(-1, 1)) for s in (0.2, 0.5)]
    assert clean < noisy[0] < noisy[1]
    assert scorer(-test_x) > 10 * clean  # inverted digits are far from the data


def test_fid_rejects_bad_input(scorer):
    with pytest.raises(ValueError, match="N >= 2"):
        scorer(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"got shape \[4, 3, 32, 32\]"):
        scorer(torch.zeros(4, 3, 32, 32))


def test_fid_warns_about_digits_in_0_1_and_only_about_those(scorer, split):
    _, test_x, _ = split
    for misuse in ((test_x + 1) / 2, (test_x[:2] + 1) / 2):  # the whole set, or a tiny subset, in [0, 1]
        with pytest.warns(UserWarning, match=r"look like digits in \[0, 1\].*pass 2 \* x - 1"):
            scorer(misuse)
    g = torch.Generator().manual_seed(0)
    legitimate = (test_x[:2],  # real digits in [-1, 1]
                  0.15 * torch.rand(100, 1, 28, 28, generator=g),  # a barely trained generator: faint gray, all >= 0
                  0.6 + 0.4 * torch.rand(2, 1, 28, 28, generator=g))  # two bright crops of strokes
    for images in legitimate:
        assert images.min() >= 0 or images is legitimate[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            scorer(images)
    assert not fid.looks_like_unit_range(test_x) and fid.looks_like_unit_range((test_x + 1) / 2)
