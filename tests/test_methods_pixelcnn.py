"""PixelCNN teachers and their KL distillation (kdlab.methods.pixelcnn): mle_step and kl_step
against straight-line float64 references written here, teacher_logits, train_pixelcnn and
distill_pixelcnn (data and on-policy contexts, cached logits, resume)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import kdlab as kd
from kdlab.methods import pixelcnn as pc


def _config(**changes):
    return kd.TrainConfig(**{"device": "cpu", "progress": False, **changes})


def _pixelcnn(seed, hidden=8, n_blocks=1, levels=4, size=8):
    kd.seed_everything(seed)
    return kd.models.PixelCNN(levels=levels, hidden=hidden, n_blocks=n_blocks, img_size=size)


@pytest.fixture(scope="module")
def small_images(mnist5k_train):
    return F.avg_pool2d(mnist5k_train[0][:64, :, :24, :24], 3)  # (64, 1, 8, 8) in [-1, 1]


@pytest.fixture(scope="module")
def teacher(small_images):
    t = _pixelcnn(1, hidden=16, n_blocks=2)
    pc.train_pixelcnn(t, small_images, _config(steps=30, batch_size=16, lr=3e-3))
    return t


def _weights(m):
    return [v.clone() for v in m.state_dict().values()]


def _close(a, b, rtol=1e-9, atol=1e-12):
    return all(torch.allclose(x.double(), y.double(), rtol=rtol, atol=atol) for x, y in zip(a, b))


def _step(opt, loss):
    opt.zero_grad()
    loss.backward()
    opt.step()


# ---------------------------------------------------------------------------- step functions vs references
def test_mle_step_equals_log_softmax_and_gather():
    model = _pixelcnn(0, hidden=8, n_blocks=1, levels=5, size=6).double()
    ref = copy.deepcopy(model)
    opt, opt_ref = torch.optim.Adam(model.parameters(), lr=1e-3), torch.optim.Adam(ref.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randint(0, 5, (4, 1, 6, 6), generator=g)
        out = pc.mle_step(model, x, opt)
        # -log p(x) / D: minus the mean over pixels of log softmax(logits)[x_i]
        nll = -ref(x).log_softmax(1).gather(1, x).mean()
        _step(opt_ref, nll)
        assert set(out) == {"bits_per_dim"}
        assert out["bits_per_dim"].item() == pytest.approx(nll.item() / math.log(2), rel=1e-12)
        assert _close(_weights(model), _weights(ref))


def _kl64(student_logits, teacher_logits, temperature, direction):
    """Mean over positions of T^2 KL, the softmax over the class axis 1 written out in float64."""
    ls = student_logits.double() / temperature
    lt = teacher_logits.double() / temperature
    log_q = ls - torch.logsumexp(ls, 1, keepdim=True)
    log_p = lt - torch.logsumexp(lt, 1, keepdim=True)
    a, b = (log_p, log_q) if direction == "forward" else (log_q, log_p)
    return temperature ** 2 * (a.exp() * (a - b)).sum(1).mean()


@pytest.mark.parametrize("direction, temperature", [("forward", 1.0), ("forward", 2.5), ("reverse", 0.7)])
def test_kl_step_equals_the_float64_kl_formula(direction, temperature):
    student = _pixelcnn(0, hidden=8, n_blocks=1, levels=5, size=6).double()
    teacher = _pixelcnn(1, hidden=8, n_blocks=1, levels=5, size=6).double().eval()
    ref = copy.deepcopy(student)
    opt, opt_ref = torch.optim.Adam(student.parameters(), lr=1e-3), torch.optim.Adam(ref.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randint(0, 5, (4, 1, 6, 6), generator=g)
        with torch.no_grad():
            target = teacher(x)
        out = pc.kl_step(student, x, target, opt, temperature, direction)
        logits = ref(x)
        loss = _kl64(logits, target, temperature, direction)
        _step(opt_ref, loss)
        nll = -logits.detach().log_softmax(1).gather(1, x).mean()
        assert set(out) == {"kl", "bits_per_dim"}
        assert out["kl"].item() == pytest.approx(loss.item(), rel=1e-10)
        assert out["bits_per_dim"].item() == pytest.approx(nll.item() / math.log(2), rel=1e-6)  # in float32
        assert _close(_weights(student), _weights(ref))


# ---------------------------------------------------------------------------- teacher training
def test_pixelcnn_loss_decreases(mnist5k_train):
    images = mnist5k_train[0][:256]
    kd.seed_everything(0)
    model = kd.models.PixelCNN(levels=4, hidden=16, n_blocks=1)
    h = pc.train_pixelcnn(model, images, _config(steps=60, batch_size=16, lr=3e-3))
    start, end = sum(h["bits_per_dim"][:5]) / 5, sum(h["bits_per_dim"][-5:]) / 5
    assert start > 1.5 and end < 0.8 * start  # log2(4) = 2 bits/dim for a uniform model
    bpd = pc.bits_per_dim(model, images[:64])
    assert 0 < bpd < 0.8 * start


def test_the_progress_bar_names_the_model_being_trained(small_images, monkeypatch, capsys):
    """Notebook 03's data-only student is trained by the teacher's loop: its bar says what it is."""
    monkeypatch.setenv("KDLAB_PROGRESS", "text")
    model = _pixelcnn(1, hidden=8, n_blocks=1)
    pc.train_pixelcnn(model, small_images, _config(steps=2, batch_size=4, progress=True), desc="data-only student")
    pc.train_pixelcnn(model, small_images, _config(steps=1, batch_size=4, progress=True))
    err = capsys.readouterr().err
    assert "data-only student: 100%" in err and "PixelCNN (maximum likelihood): 100%" in err and "teacher" not in err


def test_bits_per_dim_is_the_mean_of_the_models_bits(teacher, small_images):
    x = kd.data.quantize(small_images, teacher.levels)
    with torch.no_grad():
        nll = -teacher(x).double().log_softmax(1).gather(1, x).flatten(1).sum(1)  # nats per image
    want = (nll / (64 * math.log(2))).mean().item()
    assert pc.bits_per_dim(teacher, small_images, batch_size=24) == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------------------- distillation
def test_cached_logits_are_the_teacher_forward_pass(teacher, small_images):
    cached = pc.teacher_logits(teacher, small_images, batch_size=24, dtype=torch.float32, progress=False)
    with torch.no_grad():
        direct = teacher(kd.data.quantize(small_images, teacher.levels))
    assert cached.shape == (64, 4, 8, 8) and torch.equal(cached, direct)
    half = pc.teacher_logits(teacher, small_images, progress=False)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), direct, atol=2e-2)
    with pytest.raises(ValueError, match="batch_size=0"):
        pc.teacher_logits(teacher, small_images, batch_size=0)


def test_distillation_lowers_the_chain_rule_kl_to_the_teacher(teacher, small_images):
    x = kd.data.quantize(small_images, 4)

    def image_kl(student):  # sum over pixels of KL(p_T(.|x<i) || p_S(.|x<i)), averaged over data images
        with torch.no_grad():
            return kd.losses.kl_distillation(student(x), teacher(x), reduction="none").flatten(1).sum(1).mean().item()

    student = _pixelcnn(0)
    before = image_kl(student)
    h = pc.distill_pixelcnn(student, teacher, small_images, _config(steps=40, batch_size=16, lr=3e-3))
    assert image_kl(student) < 0.5 * before
    assert len(h["kl"]) == 40 and len(h["bits_per_dim"]) == 40


def test_cached_teacher_logits_give_the_same_run(teacher, small_images):
    cached = pc.teacher_logits(teacher, small_images, dtype=torch.float32, progress=False)
    runs = []
    for logits in (None, cached):
        s = _pixelcnn(0)
        pc.distill_pixelcnn(s, teacher, small_images, _config(steps=5, batch_size=8), cached_logits=logits,
                            temperature=2.0)
        runs.append(_weights(s))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_student_of_its_own_teacher_has_zero_loss(teacher, small_images):
    student = _pixelcnn(1, hidden=16, n_blocks=2)
    student.load_state_dict(teacher.state_dict())
    # a tiny lr (TrainConfig refuses 0): Adam would turn the rounding-level gradient (~1e-9) of
    # identical models into full-size steps of lr
    for direction, context in (("forward", "data"), ("reverse", "data"), ("reverse", "student")):
        h = pc.distill_pixelcnn(student, teacher, small_images, _config(steps=3, batch_size=8, lr=1e-12),
                                direction=direction, context=context, pool_size=8)
        assert max(h["kl"]) < 1e-10


def test_on_policy_reverse_kl_trains_and_resumes_exactly(teacher, small_images, tmp_path):
    config = _config(steps=6, batch_size=8, lr=3e-3)
    common = dict(direction="reverse", context="student", pool_size=8, refresh_every=4)
    full = _pixelcnn(0)
    h_full = pc.distill_pixelcnn(full, teacher, small_images, config, **common)
    assert set(h_full) == {"step", "kl", "bits_per_dim"} and all(v >= 0 for v in h_full["kl"])
    state = tmp_path / "state.safetensors"
    part = _pixelcnn(0)  # stop after step 3 (mid pool interval): the pool must come back from the state
    pc.distill_pixelcnn(part, teacher, small_images, config.replace(steps=3, state_path=state), **common)
    resumed = _pixelcnn(7)
    h = pc.distill_pixelcnn(resumed, teacher, small_images, config.replace(state_path=state), **common)
    assert all(torch.equal(a, b) for a, b in zip(_weights(full), _weights(resumed)))
    assert h["kl"] == h_full["kl"]


def test_sample_pool_refill_holds_student_samples_and_teacher_logits(teacher):
    student = _pixelcnn(0)
    pool = pc.SamplePool(5, teacher.levels, teacher.img_size)
    assert pool.images.shape == (5, 1, 8, 8) and pool.teacher_logits.shape == (5, 4, 8, 8)
    pool.refill(student, teacher, torch.Generator().manual_seed(3))
    want = student.sample(5, torch.Generator().manual_seed(3), progress=False)
    with torch.no_grad():
        assert torch.equal(pool.images, want) and torch.equal(pool.teacher_logits, teacher(want))
    assert set(dict(pool.named_buffers())) == {"images", "teacher_logits"}  # saved in a training state


def test_distillation_arguments_are_checked(teacher, small_images):
    s = _pixelcnn(0)
    config = _config(steps=1)
    with pytest.raises(ValueError, match="direction"):
        pc.distill_pixelcnn(s, teacher, small_images, config, direction="both")
    with pytest.raises(ValueError, match="context"):
        pc.distill_pixelcnn(s, teacher, small_images, config, context="teacher")
    with pytest.raises(ValueError, match="levels"):
        pc.distill_pixelcnn(_pixelcnn(0, levels=8), teacher, small_images, config)
    with pytest.raises(ValueError, match="cached_logits"):
        pc.distill_pixelcnn(s, teacher, small_images, config, cached_logits=torch.zeros(3, 4, 8, 8))
    with pytest.raises(ValueError, match="temperature"):
        pc.distill_pixelcnn(s, teacher, small_images, config, temperature=0.0)
    with pytest.raises(ValueError, match="pool_size=0"):
        pc.distill_pixelcnn(s, teacher, small_images, config, context="student", pool_size=0)
    assert math.isfinite(pc.bits_per_dim(s, small_images))


def test_kl_step_with_float16_cached_logits_equals_float32():
    """Cached teacher logits are float16; the step casts them to the student's dtype, which is what
    the formula did anyway, so the update is the same as with float32 targets of the same values."""
    kd.seed_everything(0)
    base = kd.models.PixelCNN(levels=4, hidden=8, n_blocks=1)
    x = torch.randint(0, 4, (2, 1, 28, 28))
    target16 = (3 * torch.randn(2, 4, 28, 28)).half()
    runs = []
    for target in (target16, target16.float()):
        student = copy.deepcopy(base)
        opt = torch.optim.Adam(student.parameters(), lr=1e-3)
        out = pc.kl_step(student, x, target, opt, 2.0, "forward")
        runs.append((out["kl"].item(), [p.detach().clone() for p in student.parameters()]))
    assert runs[0][0] == runs[1][0] and all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
