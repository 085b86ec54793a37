"""The shared training loop (kdlab.engine): TrainConfig, Trainer (determinism, resume, deferred
interrupt, non-finite stop, callbacks, metrics) and the checks every method uses."""
import dataclasses
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import kdlab as kd
from kdlab.checkpoints import CheckpointError
from kdlab.engine import Trainer, TrainingDiverged, TrainingInterrupted


def _config(**changes):
    """A CPU config without a progress bar; lr=2e-4 was the old train_gan's default."""
    return kd.TrainConfig(**{"device": "cpu", "progress": False, "lr": 2e-4, **changes})


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


# ---------------------------------------------------------------------------- TrainConfig
def test_train_config_defaults_and_validation():
    config = kd.TrainConfig()
    assert (config.lr, config.seed, config.device, config.state_path, config.progress) == (1e-3, 0, "auto", None, True)
    for changes, message in (({"steps": -1}, r"steps=-1 is not valid; expected an integer >= 0"),
                             ({"steps": 2.0}, r"steps=2\.0 is not valid"),
                             ({"batch_size": 0}, r"batch_size=0 is not valid; expected an integer >= 1"),
                             ({"batch_size": True}, r"batch_size=True is not valid"),
                             ({"seed": -3}, r"seed=-3 is not valid; expected an integer >= 0"),
                             ({"checkpoint_every": 0}, r"checkpoint_every=0 is not valid; expected an integer >= 1"),
                             ({"checkpoint_every": 2.5}, r"checkpoint_every=2\.5 is not valid")):
        with pytest.raises(ValueError, match=message):
            kd.TrainConfig(**changes)
    for lr in (0, 0.0, -1e-3, math.nan, math.inf, True, "1e-3"):
        with pytest.raises(ValueError, match=r"lr=.* is not valid; expected a finite number > 0"):
            kd.TrainConfig(lr=lr)
    assert kd.TrainConfig(steps=0).steps == 0  # zero steps is allowed (evaluate a loaded state)


def test_train_config_is_frozen_and_replace_copies_and_validates():
    config = kd.TrainConfig(steps=10, batch_size=8, lr=0.01, seed=3)
    changed = config.replace(steps=20, state_path="x.safetensors")
    assert (changed.steps, changed.state_path) == (20, "x.safetensors")
    assert (changed.batch_size, changed.lr, changed.seed) == (8, 0.01, 3)
    assert (config.steps, config.state_path) == (10, None)  # the original is unchanged
    assert config.replace() == config and config.replace() is not config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 5
    with pytest.raises(ValueError, match="batch_size=0"):
        config.replace(batch_size=0)
    with pytest.raises(TypeError):
        config.replace(epochs=3)


# ---------------------------------------------------------------------------- determinism and resume
def test_gan_training_is_deterministic(images):
    runs = []
    for seed in (0, 0, 1):
        g, d = _gan(seed)
        kd.methods.gan.train_gan(g, d, images, _config(steps=4, batch_size=8, seed=seed))
        runs.append(_weights(g, d))
    assert _same(runs[0], runs[1])
    assert not _same(runs[0], runs[2])


def test_resumed_run_equals_uninterrupted_run(images, tmp_path):
    g, d = _gan()
    h_full = kd.methods.gan.train_gan(g, d, images, _config(steps=6, batch_size=8))
    full = _weights(g, d)
    state = tmp_path / "state.safetensors"
    g, d = _gan()
    kd.methods.gan.train_gan(g, d, images, _config(steps=3, batch_size=8, state_path=state))
    g, d = _gan(seed=5)  # different initial weights: everything must come from the state file
    h = kd.methods.gan.train_gan(g, d, images, _config(steps=6, batch_size=8, state_path=state))
    assert _same(full, _weights(g, d))
    assert h["step"] == list(range(6)) and h["loss_d"] == h_full["loss_d"]


def _toy(seed=0):
    """A linear regression trained with Adam: the trainer's state is its weights and moments."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    w_true = torch.tensor([[1.0, -2.0, 0.5]])

    def step_fn(step, g):
        x = torch.randn(8, 3, generator=g)
        loss = (model(x) - x @ w_true.T).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    return model, opt, step_fn


def _toy_trainer(model, opt, **changes):
    return Trainer(_config(seed=4, **changes), modules={"m": model}, optimizers={"o": opt}, run={"kind": "toy"})


def test_a_trainer_resumes_from_the_state_another_trainer_wrote(tmp_path):
    model, opt, step_fn = _toy()
    h_full = _toy_trainer(model, opt, steps=7).fit(step_fn)
    full = _weights(model)
    state = tmp_path / "toy.safetensors"
    model, opt, step_fn = _toy()
    h_part = _toy_trainer(model, opt, steps=3, state_path=state).fit(step_fn)
    assert h_part["step"] == [0, 1, 2] and kd.checkpoints.metadata(state)["step"] == 3
    model, opt, step_fn = _toy(seed=9)  # new objects, other weights: a fresh process resuming the file
    assert not _same(full, _weights(model))
    resumed = _toy_trainer(model, opt, steps=7, state_path=state)
    h = resumed.fit(step_fn)
    assert _same(full, _weights(model)) and h == h_full and resumed.history is h
    assert opt.state_dict()["state"][0]["step"].item() == 7  # Adam's moments came back with the weights
    # asking for no more steps than the state holds loads it and trains nothing
    model, opt, step_fn = _toy(seed=9)
    calls = []
    h = _toy_trainer(model, opt, steps=5, state_path=state).fit(lambda s, g: calls.append(s) or step_fn(s, g))
    assert calls == [] and _same(full, _weights(model)) and h == h_full


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

    trainer = Trainer(_config(steps=8, seed=0, state_path=tmp_path / "s.safetensors"), modules={"a": a, "b": b},
                      optimizers={"oa": opt_a, "ob": opt_b}, run={"kind": "toy"})
    return step_fn, trainer, (a, b)


def test_interrupt_mid_step_saves_after_the_step_and_resume_is_exact(tmp_path, capsys):
    step_fn, trainer, modules = _two_update_loop(tmp_path / "full")
    full_history = trainer.fit(step_fn)
    full = _weights(*modules)

    step_fn, trainer, modules = _two_update_loop(tmp_path / "cut", interrupt_at=3)
    handler_before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN under `cmd &` in a script
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit(step_fn)
    assert kd.checkpoints.metadata(trainer.state_path)["step"] == 4  # step 3 finished before stopping
    assert (stop.value.step, stop.value.steps, stop.value.saved_step) == (4, 8, 4)
    assert str(stop.value) == (f"train: interrupted after step 4 of 8; training state saved to {trainer.state_path}; "
                               "run the cell again to resume")
    step_fn, trainer, modules = _two_update_loop(tmp_path / "cut")  # a fresh kernel: new objects, same file
    history = trainer.fit(step_fn)
    assert history == full_history
    assert _same(full, _weights(*modules))
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored


def test_a_second_interrupt_stops_a_step_at_once_and_the_handler_is_restored(tmp_path):
    """A step that hangs (here: one that never returns until interrupted twice) can still be
    stopped: the first SIGINT is deferred, the second raises inside the step."""
    model = torch.nn.Linear(1, 1)
    reached = []

    def hanging_step(step, g):
        os.kill(os.getpid(), signal.SIGINT)  # deferred: only sets the flag
        reached.append("after first")
        os.kill(os.getpid(), signal.SIGINT)  # raises here, inside the step
        reached.append("after second")
        return {"loss": 0.0}

    handler_before = signal.getsignal(signal.SIGINT)
    trainer = Trainer(_config(steps=3, seed=0), modules={"m": model}, optimizers={}, run={"kind": "toy"})
    with pytest.raises(TrainingInterrupted, match=r"during step 1 of 3 \(that step is lost\); nothing saved"):
        trainer.fit(hanging_step)
    assert reached == ["after first"]
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_processes_stop_after_the_same_step_whenever_their_signals_come(monkeypatch):
    """torchrun passes Ctrl-C on to each process, a moment apart. This process plays rank 0 of two: the all-reduce
    is replaced by one that adds the other rank's stop flag (one all-reduce a step, one more after the last).
    (a) The signal lands during a step's all-reduce, after this rank sent "no stop": it goes into the next
    all-reduce and both ranks stop after the next step (before, the agreed "no stop" overwrote it and the job
    trained on until torchrun killed it). (b) The other rank's stop is agreed first and this rank's own signal
    comes after: the first this process got, so it only asks to stop (before, it counted as a second one and
    cut the step short). (c, d) A signal during the last step's all-reduce, on this rank or the other: both
    agree after the last save and stop alike (before, one rank returned and the other raised)."""
    from kdlab import engine
    from kdlab.engine import STOP
    monkeypatch.setattr(engine._distributed, "same_over_processes", lambda *args: True)

    def run(other_stops_from_call=None, signal_during_call=None, signal_after_agreement_at=None):
        calls = []

        def all_reduce(values, w, device):
            if len(calls) == signal_during_call:
                os.kill(os.getpid(), signal.SIGINT)  # after this rank's flag was sent
            other = float(other_stops_from_call is not None and len(calls) >= other_stops_from_call)
            calls.append(values[STOP])
            return values | {STOP: (values[STOP] + other) / 2}

        monkeypatch.setattr(engine._distributed, "mean_over_processes", all_reduce)
        model, opt, step_fn = _toy()
        trainer = _toy_trainer(model, opt, steps=8)
        trainer.world = kd.distributed.World(rank=0, size=2)
        trainer.add_callback("on_step_end", lambda tr: tr.step == signal_after_agreement_at
                             and os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(TrainingInterrupted) as stop:
            trainer.fit(step_fn)
        return str(stop.value), calls

    after = "train: interrupted after step {} of 8; nothing saved (no state_path); run the cell again to start afresh"
    assert run(signal_during_call=2) == (after.format(4), [0, 0, 0, 1])  # (a)
    assert run(other_stops_from_call=2, signal_after_agreement_at=2) == (after.format(3), [0, 0, 0])  # (b)
    assert run(signal_during_call=7) == (after.format(8), [0] * 8 + [1])  # (c): the 9th all-reduce, after the last save
    assert run(other_stops_from_call=8) == (after.format(8), [0] * 9)  # (d)


def test_stop_button_in_jupyter_shows_one_line_and_the_state_resumes(tmp_path):
    """Jupyter's stop button (SIGINT, sent here from a callback) after step 5: the step finishes,
    the state is saved, and IPython shows the exception as the one line of ``_render_traceback_``."""
    model, opt, step_fn = _toy()
    full = _toy_trainer(model, opt, steps=8).fit(step_fn)
    model, opt, step_fn = _toy()
    trainer = _toy_trainer(model, opt, steps=8, state_path=tmp_path / "s.safetensors", checkpoint_every=3)
    trainer.add_callback("on_step_end", lambda tr: tr.step == 4 and os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt) as stop:  # still a KeyboardInterrupt for code that catches those
        trainer.fit(step_fn)
    assert isinstance(stop.value, TrainingInterrupted) and kd.checkpoints.metadata(trainer.state_path)["step"] == 5
    assert stop.value._render_traceback_() == [
        f"TrainingInterrupted: train: interrupted after step 5 of 8; training state saved to {trainer.state_path}; "
        "run the cell again to resume"]
    model, opt, step_fn = _toy(seed=3)  # "run the cell again": new objects, the same file
    assert _toy_trainer(model, opt, steps=8, state_path=trainer.state_path).fit(step_fn) == full


def test_an_interrupt_inside_a_step_names_the_last_saved_state(tmp_path):
    """A KeyboardInterrupt raised at once (a second Ctrl-C, here from a callback before step 5's
    update) saves nothing half-done: the message points at the state of step 3, and resuming from
    it gives the uninterrupted run."""
    model, opt, step_fn = _toy()
    full = _toy_trainer(model, opt, steps=8).fit(step_fn)

    def stop(tr):
        if tr.step == 4:
            raise KeyboardInterrupt

    for state_path, checkpoint_every, message in (
            (tmp_path / "s.safetensors", 3, "train: interrupted during step 5 of 8 (that step is lost); the training state "
                                            f"of step 3 is in {tmp_path / 's.safetensors'}; run the cell again to resume "
                                            "from there"),
            (tmp_path / "t.safetensors", 10, "train: interrupted during step 5 of 8 (that step is lost); no training state "
                                             f"saved yet ({tmp_path / 't.safetensors'}); run the cell again to start afresh"),
            (None, 3, "train: interrupted during step 5 of 8 (that step is lost); nothing saved (no state_path); run the "
                      "cell again to start afresh")):
        model, opt, step_fn = _toy()
        trainer = _toy_trainer(model, opt, steps=8, state_path=state_path, checkpoint_every=checkpoint_every)
        trainer.add_callback("on_step_start", stop)
        with pytest.raises(TrainingInterrupted) as info:
            trainer.fit(step_fn)
        assert str(info.value) == message and info.value.__cause__ is None
    assert kd.checkpoints.metadata(tmp_path / "s.safetensors")["step"] == 3 and not (tmp_path / "t.safetensors").exists()
    model, opt, step_fn = _toy(seed=3)
    assert _toy_trainer(model, opt, steps=8, state_path=tmp_path / "s.safetensors").fit(step_fn) == full


def test_ipython_prints_an_interrupted_training_as_one_line(tmp_path):
    """What a notebook shows: IPython runs a cell whose training is interrupted and prints the
    exception's one line, no traceback (checked in a fresh interpreter, IPython's shell is global)."""
    code = f"""
import os, signal, torch
from IPython.core.interactiveshell import InteractiveShell
import kdlab as kd
model = torch.nn.Linear(1, 1)
trainer = kd.engine.Trainer(kd.TrainConfig(steps=9, device="cpu", progress=False, state_path={str(tmp_path / "s.safetensors")!r}),
                            modules={{"m": model}}, optimizers={{}}, run={{"kind": "toy"}}, desc="toy")
trainer.add_callback("on_step_end", lambda tr: tr.step == 1 and os.kill(os.getpid(), signal.SIGINT))
shell = InteractiveShell.instance(colors="nocolor")
shell.push({{"trainer": trainer}})
shell.run_cell("trainer.fit(lambda s, g: {{'loss': 0.0}})")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == (f"TrainingInterrupted: toy: interrupted after step 2 of 9; training state saved to "
                           f"{tmp_path / 's.safetensors'}; run the cell again to resume")


# ---------------------------------------------------------------------------- non-finite stop, refusals
def test_non_finite_loss_stops_with_a_clear_message(images, tmp_path):
    bad = images.clone()
    bad[:] = float("nan")  # broken data makes the discriminator's loss NaN at once
    g, d = _gan()
    state = tmp_path / "state.safetensors"
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 0.*Lower the learning rate \(lr=0.0002\)"):
        kd.methods.gan.train_gan(g, d, bad, _config(steps=5, batch_size=4, lr=2e-4, state_path=state,
                                                    checkpoint_every=1))
    assert not state.exists()


def test_divergence_after_checkpoints_removes_the_state(tmp_path):
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(step, g):
        return {"loss": 1.0 if step < 4 else math.inf}

    state = tmp_path / "s.safetensors"
    trainer = Trainer(_config(steps=6, seed=0, state_path=state, checkpoint_every=2), modules={"m": model},
                      optimizers={"o": opt}, run={"kind": "toy"})
    with pytest.raises(TrainingDiverged, match="step 4"):
        trainer.fit(step_fn)
    assert not state.exists()


def test_state_of_another_run_is_refused(images, tmp_path):
    state = tmp_path / "state.safetensors"
    g, d = _gan()
    kd.methods.gan.train_gan(g, d, images, _config(steps=2, batch_size=8, state_path=state))
    g, d = _gan()
    with pytest.raises(CheckpointError, match="different run"):
        kd.methods.gan.train_gan(g, d, images, _config(steps=4, batch_size=16, state_path=state))


def test_a_model_checkpoint_is_not_a_training_state(tmp_path):
    model, opt, step_fn = _toy()
    path = kd.checkpoints.save(kd.models.Generator(width=1), tmp_path / "g.safetensors")
    with pytest.raises(CheckpointError, match="not a training state"):
        _toy_trainer(model, opt, steps=2, state_path=path).fit(step_fn)


def test_bad_training_arguments(images):
    g, d = _gan()
    with pytest.raises(ValueError, match=r"expects \[N, 1, 32, 32\]"):
        kd.methods.gan.train_gan(kd.models.Generator(img_size=32), d, images, _config(steps=1))
    with pytest.raises(ValueError, match="steps=-1"):
        kd.methods.gan.train_gan(g, d, images, _config(steps=-1))
    with pytest.raises(ValueError, match="batch_size=0"):
        kd.methods.gan.train_gan(g, d, images, _config(steps=1, batch_size=0))
    with pytest.raises(ValueError, match=r"images have shape \[256, 28, 28\]"):
        kd.engine.check_images(images[:, 0], g)


# ---------------------------------------------------------------------------- callbacks and metrics
def test_callbacks_fire_in_order_and_unknown_events_are_refused():
    model, opt, step_fn = _toy()
    trainer = _toy_trainer(model, opt, steps=3)
    events = []
    trainer.add_callback("on_step_start", lambda tr: events.append(("start", tr.step, model.training)))
    trainer.add_callback("on_step_end", lambda tr: events.append(("end", tr.step, tr.metrics["loss"])))
    trainer.add_callback("on_step_end", lambda tr: events.append(("end, second", tr.step, len(tr.history["step"]))))
    trainer.add_callback("on_train_end", lambda tr: events.append(("train_end", tr.step, model.training)))
    history = trainer.fit(step_fn)
    expected = []
    for s in range(3):
        expected += [("start", s, True), ("end", s, history["loss"][s]), ("end, second", s, s + 1)]
    assert events == expected + [("train_end", 2, False)]  # modules train during fit, eval afterwards
    with pytest.raises(ValueError, match=r"event='on_epoch_end' is not valid; allowed values: 'on_step_start'"):
        trainer.add_callback("on_epoch_end", lambda tr: None)


def test_metrics_returned_as_tensors_become_floats_in_the_history():
    w = torch.nn.Parameter(torch.tensor([0.5, -1.5]))
    opt = torch.optim.SGD([w], lr=0.1)
    seen = []

    def step_fn(step, g):
        loss = w.pow(2).sum()  # a tensor that still requires grad
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss, "f32": torch.tensor(0.1), "f64": torch.tensor(0.1, dtype=torch.float64),
                "half": torch.tensor(0.3, dtype=torch.float16), "count": torch.tensor(step), "plain": 0.25,
                "one": torch.ones(1, 1)}

    trainer = Trainer(_config(steps=2), modules={}, optimizers={"o": opt}, run={"kind": "metrics"})
    trainer.add_callback("on_step_end", lambda tr: seen.append(dict(tr.metrics)))
    h = trainer.fit(step_fn)
    assert all(type(v) is float for values in h.values() if values is not h["step"] for v in values)
    assert h["step"] == [0, 1] and h["count"] == [0.0, 1.0] and h["plain"] == [0.25, 0.25] and h["one"] == [1.0, 1.0]
    assert h["f32"] == [float(torch.tensor(0.1))] * 2 and h["f64"] == [0.1, 0.1]  # exactly the tensor's value
    assert h["half"] == [float(torch.tensor(0.3, dtype=torch.float16))] * 2
    # the loss before each step: |w|^2 = 0.25 + 2.25, then w shrinks by (1 - 2 * 0.1)
    assert h["loss"] == pytest.approx([2.5, 2.5 * 0.8 ** 2], rel=1e-6)
    assert seen == [{k: v[i] for k, v in h.items() if k != "step"} for i in range(2)]


def test_step_generators_depend_only_on_seed_and_step():
    draws = []
    for seed in (0, 0, 1):
        model, opt, _ = _toy()
        trainer = Trainer(_config(steps=3, seed=seed), modules={"m": model}, optimizers={"o": opt}, run={"kind": "g"})
        trainer.fit(lambda s, g: draws.append(torch.rand(4, generator=g)) or {})
    a, b, c = draws[:3], draws[3:6], draws[6:]
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # same seed, same draws
    assert not any(torch.equal(x, y) for x, y in zip(a, c))  # another seed, other draws
    assert len({tuple(x.tolist()) for x in a}) == 3  # each step its own stream


def test_sample_batch_and_freeze():
    images = torch.arange(10.0).view(10, 1, 1, 1)
    batch = kd.engine.sample_batch(images, 64, torch.Generator().manual_seed(0), "cpu")
    assert batch.shape == (64, 1, 1, 1) and set(batch.flatten().tolist()) <= set(range(10))
    assert len(set(batch.flatten().tolist())) > 5  # drawn with replacement, spread over the set
    teacher = kd.models.Generator(width=1)
    assert kd.engine.freeze(teacher, "cpu") is teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_ema_follows_its_closed_form_and_copies_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = kd.engine.EMA(model, decay=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 3))  # moves BatchNorm's running statistics
    ema.update(model)
    ema.update(model)  # twice with the new weights: ema = w + 1 - 0.9^2 * 1
    for e, w in zip(ema.model.parameters(), start):
        assert torch.allclose(e, w + 1 - 0.81, atol=1e-6) and not e.requires_grad
    for e, b in zip(ema.model.buffers(), model.buffers()):
        assert torch.equal(e, b)  # running statistics are copied, not averaged
    with pytest.raises(ValueError, match="decay"):
        kd.engine.EMA(model, decay=1.0)


def test_gan_training_with_ema_resumes_exactly(images, tmp_path):
    def run(state=None, steps=4):
        kd.seed_everything(0)
        g, d = kd.models.Generator(width=2), kd.models.Discriminator(width=2)
        ema = kd.engine.EMA(g, 0.5)
        kd.methods.gan.train_gan(g, d, images, _config(steps=steps, batch_size=8, state_path=state), ema=ema)
        return ema.model

    full = run()
    run(tmp_path / "s.safetensors", steps=2)
    resumed = run(tmp_path / "s.safetensors", steps=4)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))


def test_ema_warmup_follows_its_schedule():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = kd.engine.EMA(model, decay=0.999, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(90) == pytest.approx(0.91)
    assert ema.decay_at(10_000) == 0.999 and ema.decay_at(None) == 0.999
    with torch.no_grad():
        model.weight.fill_(0.0)
        ema.model.weight.fill_(1.0)
    ema.update(model, step=0)  # d = 0.1: ema = 0.1 * 1 + 0.9 * 0
    assert ema.model.weight.item() == pytest.approx(0.1)
