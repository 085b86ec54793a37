"""The one evaluation protocol of the digit notebooks (kdlab.evaluation.Evaluator): the teacher
scored as itself, blur detected, the generator protocol's noise, and its argument checks."""
import pytest
import torch

import kdlab as kd
from kdlab.evaluation import Evaluator


@pytest.fixture(scope="module")
def teacher():
    return kd.checkpoints.load(kd.checkpoints.shipped("gan_teacher"), device="cpu")


@pytest.fixture(scope="module")
def evaluator(teacher):
    return Evaluator.for_generator(teacher, n=60, seed=3, device="cpu")


def test_for_generator_draws_the_documented_noise_and_the_teachers_images(evaluator, teacher):
    # the protocol: n noise vectors from torch.Generator().manual_seed(10_000 + seed), drawn on the CPU
    z = torch.randn(60, 64, generator=torch.Generator().manual_seed(10_003))
    if teacher.n_classes:  # a conditional teacher: every class equally often, one-hot after z
        z = torch.cat([z, torch.nn.functional.one_hot(torch.arange(60) % teacher.n_classes, teacher.n_classes).float()], 1)
    assert torch.equal(evaluator.z, z)
    with torch.no_grad():
        assert torch.equal(evaluator.teacher_images, teacher.eval()(z))
    assert evaluator.teacher_images.shape == (60, 1, 28, 28) and not evaluator.teacher_images.requires_grad


def evaluator_noise_dim(evaluator):
    return kd.checkpoints.load(kd.checkpoints.shipped("gan_teacher")).noise_dim  # z_dim plus any one-hot classes


def test_evaluator_scores_the_teacher_as_itself(evaluator):
    r = evaluator(evaluator.teacher_images)
    assert r["mse_to_teacher"] == 0 and r["gram_distance"] == 0 and r["class_tv_to_teacher"] == 0
    assert r["hf_ratio"] == pytest.approx(1.0) and r["band_ratios"] == pytest.approx([1.0] * 4)
    assert r["fid"] == pytest.approx(evaluator.fid(evaluator.teacher_images))
    assert 0 < r["precision"] <= 1 and 0 < r["recall"] <= 1
    assert evaluator.z.shape == (60, evaluator_noise_dim(evaluator))


def test_evaluator_sees_blur_and_rejects_other_shapes(evaluator):
    blurred = torch.nn.functional.avg_pool2d(evaluator.teacher_images, 3, 1, 1)  # low-pass: less fine detail
    r = evaluator(blurred)
    assert r["mse_to_teacher"] > 0 and r["hf_ratio"] < 0.5 and r["band_ratios"][-1] < r["band_ratios"][0]
    assert r["gram_distance"] > 0 and r["fid"] > evaluator(evaluator.teacher_images)["fid"]
    assert r["mse_to_teacher"] == pytest.approx((blurred - evaluator.teacher_images).double().pow(2).mean().item(),
                                                rel=1e-6)
    with pytest.raises(ValueError, match="evaluator's inputs"):
        evaluator(evaluator.teacher_images[:10])
    with pytest.raises(ValueError, match="at least 10"):
        Evaluator.for_generator(kd.models.Generator(width=1), n=5, device="cpu")
    with pytest.raises(ValueError, match="at least 10"):
        Evaluator(torch.zeros(9, 1, 28, 28))


def test_an_evaluator_of_any_teacher_images_matches_the_generator_protocol(evaluator):
    """Evaluator(images) is the protocol for any inputs (e.g. a diffusion sampler's starting noise)."""
    direct = Evaluator(evaluator.teacher_images.clone())
    shifted = (evaluator.teacher_images + 0.1).clamp(-1, 1)
    assert direct(shifted) == evaluator(shifted)
