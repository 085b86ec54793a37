"""KL distillation of a PixelCNN (kd.train.distill_pixelcnn, pixelcnn_logits)."""
import math

import pytest
import torch
import torch.nn.functional as F

import kdlab as kd


def _pixelcnn(seed, hidden=8, n_blocks=1, levels=4, size=8):
    kd.seed_everything(seed)
    return kd.models.PixelCNN(levels=levels, hidden=hidden, n_blocks=n_blocks, img_size=size)


@pytest.fixture(scope="module")
def small_images(mnist5k_train):
    return F.avg_pool2d(mnist5k_train[0][:64, :, :24, :24], 3)  # (64, 1, 8, 8) in [-1, 1]


@pytest.fixture(scope="module")
def teacher(small_images):
    t = _pixelcnn(1, hidden=16, n_blocks=2)
    kd.train.train_pixelcnn(t, small_images, steps=30, batch_size=16, lr=3e-3, device="cpu", progress=False)
    return t


def _weights(m):
    return [v.clone() for v in m.state_dict().values()]


def test_cached_logits_are_the_teacher_forward_pass(teacher, small_images):
    cached = kd.train.pixelcnn_logits(teacher, small_images, batch_size=24, dtype=torch.float32, progress=False)
    with torch.no_grad():
        direct = teacher(kd.data.quantize(small_images, teacher.levels))
    assert cached.shape == (64, 4, 8, 8) and torch.equal(cached, direct)
    half = kd.train.pixelcnn_logits(teacher, small_images, progress=False)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), direct, atol=2e-2)


def test_distillation_lowers_the_chain_rule_kl_to_the_teacher(teacher, small_images):
    x = kd.data.quantize(small_images, 4)

    def image_kl(student):  # sum over pixels of KL(p_T(.|x<i) || p_S(.|x<i)), averaged over data images
        with torch.no_grad():
            return kd.losses.kl_distillation(student(x), teacher(x), reduction="none").flatten(1).sum(1).mean().item()

    student = _pixelcnn(0)
    before = image_kl(student)
    h = kd.train.distill_pixelcnn(student, teacher, small_images, steps=40, batch_size=16, lr=3e-3,
                                  device="cpu", progress=False)
    assert image_kl(student) < 0.5 * before
    assert len(h["kl"]) == 40 and len(h["bits_per_dim"]) == 40


def test_cached_teacher_logits_give_the_same_run(teacher, small_images):
    cached = kd.train.pixelcnn_logits(teacher, small_images, dtype=torch.float32, progress=False)
    runs = []
    for logits in (None, cached):
        s = _pixelcnn(0)
        kd.train.distill_pixelcnn(s, teacher, small_images, steps=5, batch_size=8, teacher_logits=logits,
                                  temperature=2.0, device="cpu", progress=False)
        runs.append(_weights(s))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_student_of_its_own_teacher_has_zero_loss(teacher, small_images):
    student = _pixelcnn(1, hidden=16, n_blocks=2)
    student.load_state_dict(teacher.state_dict())
    # lr=0: Adam would turn the rounding-level gradient (~1e-9) of identical models into full-size steps
    for direction, context in (("forward", "data"), ("reverse", "data"), ("reverse", "student")):
        h = kd.train.distill_pixelcnn(student, teacher, small_images, steps=3, batch_size=8, direction=direction,
                                      context=context, pool_size=8, lr=0.0, device="cpu", progress=False)
        assert max(h["kl"]) < 1e-10


def test_on_policy_reverse_kl_trains_and_resumes_exactly(teacher, small_images, tmp_path):
    common = dict(steps=6, batch_size=8, direction="reverse", context="student", pool_size=8, refresh_every=4,
                  lr=3e-3, device="cpu", progress=False)
    full = _pixelcnn(0)
    h_full = kd.train.distill_pixelcnn(full, teacher, small_images, **common)
    assert "bits_per_dim" not in h_full and all(v >= 0 for v in h_full["kl"])
    state = tmp_path / "state.safetensors"
    part = _pixelcnn(0)  # stop after step 3 (mid pool interval): the pool must come back from the state
    kd.train.distill_pixelcnn(part, teacher, small_images, **{**common, "steps": 3}, state_path=state)
    resumed = _pixelcnn(7)
    h = kd.train.distill_pixelcnn(resumed, teacher, small_images, **common, state_path=state)
    assert all(torch.equal(a, b) for a, b in zip(_weights(full), _weights(resumed)))
    assert h["kl"] == h_full["kl"]


def test_distillation_arguments_are_checked(teacher, small_images):
    s = _pixelcnn(0)
    with pytest.raises(ValueError, match="direction"):
        kd.train.distill_pixelcnn(s, teacher, small_images, steps=1, direction="both", progress=False)
    with pytest.raises(ValueError, match="context"):
        kd.train.distill_pixelcnn(s, teacher, small_images, steps=1, context="teacher", progress=False)
    with pytest.raises(ValueError, match="levels"):
        kd.train.distill_pixelcnn(_pixelcnn(0, levels=8), teacher, small_images, steps=1, progress=False)
    with pytest.raises(ValueError, match="teacher_logits"):
        kd.train.distill_pixelcnn(s, teacher, small_images, steps=1, teacher_logits=torch.zeros(3, 4, 8, 8),
                                  progress=False)
    with pytest.raises(ValueError, match="temperature"):
        kd.train.distill_pixelcnn(s, teacher, small_images, steps=1, temperature=0.0, progress=False)
    assert math.isfinite(kd.train.bits_per_dim(s, small_images))
