import math
import os
import signal

import pytest
import torch

import kdlab as kd
from kdlab.checkpoints import CheckpointError
from kdlab.train import TrainingDiverged


def _gan(seed=0):
    kd.seed_everything(seed)
    return kd.models.Generator(z_dim=8, width=2), kd.models.Discriminator(width=2)


def _weights(*modules):
    return [t.clone() for m in modules for t in m.state_dict().values()]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def images(mnist5k_train):
    return mnist5k_train[0][:256]


def test_gan_training_is_deterministic(images):
    runs = []
    for seed in (0, 0, 1):
        g, d = _gan(seed)
        kd.train.train_gan(g, d, images, steps=4, batch_size=8, seed=seed, device="cpu", progress=False)
        runs.append(_weights(g, d))
    assert _same(runs[0], runs[1])
    assert not _same(runs[0], runs[2])


def test_resumed_run_equals_uninterrupted_run(images, tmp_path):
    g, d = _gan()
    h_full = kd.train.train_gan(g, d, images, steps=6, batch_size=8, device="cpu", progress=False)
    full = _weights(g, d)
    state = tmp_path / "state.safetensors"
    g, d = _gan()
    kd.train.train_gan(g, d, images, steps=3, batch_size=8, device="cpu", progress=False, state_path=state)
    g, d = _gan(seed=5)  # different initial weights: everything must come from the state file
    h = kd.train.train_gan(g, d, images, steps=6, batch_size=8, device="cpu", progress=False, state_path=state)
    assert _same(full, _weights(g, d))
    assert h["step"] == list(range(6)) and h["loss_d"] == h_full["loss_d"]


def _two_update_loop(tmp_path, interrupt_at=None):
    """A toy loop whose steps make two optimiser updates, with SIGINT sent between them once."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=0.1), torch.optim.Adam(b.parameters(), lr=0.1)
    sent = []

    def step_fn(step, g):
        x = torch.randn(8, 3, generator=g)
        loss_a = (a(x) - 1).pow(2).mean()
        opt_a.zero_grad()
        loss_a.backward()
        opt_a.step()
        if step == interrupt_at and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C or Jupyter's stop button does
        loss_b = (b(x) + a(x).detach()).pow(2).mean()
        opt_b.zero_grad()
        loss_b.backward()
        opt_b.step()
        return {"loss_a": loss_a.item(), "loss_b": loss_b.item()}

    kw = dict(steps=8, seed=0, modules={"a": a, "b": b}, optimizers={"oa": opt_a, "ob": opt_b},
              run={"kind": "toy"}, state_path=tmp_path / "s.safetensors", progress=False)
    return step_fn, kw, (a, b)


def test_interrupt_mid_step_saves_after_the_step_and_resume_is_exact(tmp_path, capsys):
    step_fn, kw, modules = _two_update_loop(tmp_path / "full")
    full_history = kd.train.run_loop(step_fn, **kw)
    full = _weights(*modules)

    step_fn, kw, modules = _two_update_loop(tmp_path / "cut", interrupt_at=3)
    handler_before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN under `cmd &` in a script
    with pytest.raises(KeyboardInterrupt):
        kd.train.run_loop(step_fn, **kw)
    assert "rerun to resume" in capsys.readouterr().out
    assert kd.checkpoints.metadata(kw["state_path"])["step"] == 4  # step 3 finished before stopping
    step_fn, kw2, modules = _two_update_loop(tmp_path / "cut")  # a fresh kernel: new objects, same file
    history = kd.train.run_loop(step_fn, **kw2)
    assert history == full_history
    assert _same(full, _weights(*modules))
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored


def test_non_finite_loss_stops_with_a_clear_message(images, tmp_path):
    bad = images.clone()
    bad[:] = float("nan")  # broken data makes the discriminator's loss NaN at once
    g, d = _gan()
    state = tmp_path / "state.safetensors"
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 0.*Lower the learning rate \(lr=0.0002\)"):
        kd.train.train_gan(g, d, bad, steps=5, batch_size=4, device="cpu", progress=False, state_path=state,
                           checkpoint_every=1)
    assert not state.exists()


def test_divergence_after_checkpoints_removes_the_state(tmp_path):
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(step, g):
        return {"loss": 1.0 if step < 4 else math.inf}

    state = tmp_path / "s.safetensors"
    with pytest.raises(TrainingDiverged, match="step 4"):
        kd.train.run_loop(step_fn, steps=6, seed=0, modules={"m": model}, optimizers={"o": opt},
                          run={"kind": "toy"}, state_path=state, checkpoint_every=2, progress=False)
    assert not state.exists()


def test_state_of_another_run_is_refused(images, tmp_path):
    state = tmp_path / "state.safetensors"
    g, d = _gan()
    kd.train.train_gan(g, d, images, steps=2, batch_size=8, device="cpu", progress=False, state_path=state)
    g, d = _gan()
    with pytest.raises(CheckpointError, match="different run"):
        kd.train.train_gan(g, d, images, steps=4, batch_size=16, device="cpu", progress=False, state_path=state)


def test_pixelcnn_loss_decreases(images):
    kd.seed_everything(0)
    model = kd.models.PixelCNN(levels=4, hidden=16, n_blocks=1)
    h = kd.train.train_pixelcnn(model, images, steps=60, batch_size=16, lr=3e-3, device="cpu", progress=False)
    start, end = sum(h["bits_per_dim"][:5]) / 5, sum(h["bits_per_dim"][-5:]) / 5
    assert start > 1.5 and end < 0.8 * start  # log2(4) = 2 bits/dim for a uniform model
    bpd = kd.train.bits_per_dim(model, images[:64])
    assert 0 < bpd < 0.8 * start


def test_bad_training_arguments(images):
    g, d = _gan()
    with pytest.raises(ValueError, match=r"expects \[N, 1, 32, 32\]"):
        kd.train.train_gan(kd.models.Generator(img_size=32), d, images, steps=1, progress=False)
    with pytest.raises(ValueError, match="steps=-1"):
        kd.train.train_gan(g, d, images, steps=-1, progress=False)
    with pytest.raises(ValueError, match="batch_size=0"):
        kd.train.train_gan(g, d, images, steps=1, batch_size=0, progress=False)


def test_classifier_training_learns(mnist5k_train):
    images, labels = mnist5k_train[0][:512], mnist5k_train[1][:512]
    kd.seed_everything(0)
    clf = kd.models.Classifier(width=8, feature_dim=32)
    h = kd.train.train_classifier(clf, images, labels, steps=150, batch_size=32, lr=3e-3, device="cpu", progress=False)
    assert sum(h["loss"][-10:]) / 10 < 0.6 * sum(h["loss"][:10]) / 10
    assert kd.fid.accuracy(clf, images, labels) > 0.5  # chance is 0.1


@pytest.fixture(scope="module")
def teacher():
    return kd.checkpoints.load(kd.checkpoints.shipped("gan_teacher"))


def _student(seed=0):
    kd.seed_everything(seed)
    return kd.models.Generator(z_dim=64, width=4)


def test_same_noise_distillation_reduces_the_gap_to_the_teacher(teacher):
    student = _student()
    z = torch.randn(256, 64, generator=torch.Generator().manual_seed(123))  # held-out noise
    with torch.no_grad():
        target = teacher(z)
        before = (student.eval()(z) - target).pow(2).mean().item()
    h = kd.train.distill_gan(student, teacher, steps=120, batch_size=32, lr=2e-3, device="cpu", progress=False)
    with torch.no_grad():
        after = (student(z) - target).pow(2).mean().item()
    assert after < 0.5 * before
    assert sum(h["distill"][-10:]) < sum(h["distill"][:10])
    assert all(not p.requires_grad for p in teacher.parameters())  # the teacher stays frozen


def test_distillation_is_deterministic_and_l1_differs(teacher):
    runs = []
    for loss in ("mse", "mse", "l1"):
        s = _student()
        kd.train.distill_gan(s, teacher, steps=3, loss=loss, batch_size=8, device="cpu", progress=False)
        runs.append(_weights(s))
    assert _same(runs[0], runs[1]) and not _same(runs[0], runs[2])


def test_joint_distillation_trains_a_discriminator(teacher, images):
    s, d = _student(), kd.models.Discriminator(width=4)
    d0 = _weights(d)
    h = kd.train.distill_gan(s, teacher, steps=3, loss="joint", discriminator=d, real_images=images,
                             adversarial_weight=0.1, batch_size=8, device="cpu", progress=False)
    assert not _same(d0, _weights(d)) and len(h["loss_d"]) == 3
    assert all(t > m for t, m in zip(h["loss"], h["distill"]))  # adversarial term added (it is > 0)


def test_distillation_arguments_are_checked(teacher, images):
    with pytest.raises(ValueError, match="z_dim=8 differs"):
        kd.train.distill_gan(kd.models.Generator(z_dim=8, width=2), teacher, steps=1, progress=False)
    with pytest.raises(ValueError, match="needs a discriminator"):
        kd.train.distill_gan(_student(), teacher, steps=1, loss="joint", progress=False)
    with pytest.raises(ValueError, match="loss='kl'"):
        kd.train.distill_gan(_student(), teacher, steps=1, loss="kl", progress=False)
