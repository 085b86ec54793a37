"""The script that rebuilds the FID classifier and reference statistics (data/make_fid_reference.py),
imported as a module: its training step against a written-out cross-entropy, and a short training
run that learns."""
import copy
import importlib.util
from pathlib import Path

import pytest
import torch

import kdlab as kd
from kdlab.evaluation.fid import accuracy

SCRIPT = Path(__file__).resolve().parent.parent / "data" / "make_fid_reference.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_fid_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_classifier_step_equals_the_written_out_cross_entropy(script):
    torch.manual_seed(0)
    model = kd.models.Classifier(width=4, feature_dim=8).double()
    ref = copy.deepcopy(model)
    opt, opt_ref = torch.optim.Adam(model.parameters(), lr=1e-3), torch.optim.Adam(ref.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 28, 28, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(10, (6,), generator=g)
    out = script.classifier_step(model, x, y, opt)
    logits = ref(x)
    loss = -(logits.gather(1, y[:, None]) - torch.logsumexp(logits, 1, keepdim=True)).mean()  # -mean log softmax_y
    opt_ref.zero_grad()
    loss.backward()
    opt_ref.step()
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-12)
    assert out["accuracy"].item() == (logits.argmax(1) == y).double().mean().item()
    assert all(torch.allclose(p, q, rtol=1e-9, atol=1e-12) for p, q in zip(model.parameters(), ref.parameters()))


def test_classifier_training_learns(script, mnist5k_train):
    images, labels = mnist5k_train[0][:512], mnist5k_train[1][:512]
    kd.seed_everything(0)
    clf = kd.models.Classifier(width=8, feature_dim=32)
    config = kd.TrainConfig(steps=150, batch_size=32, lr=3e-3, device="cpu", progress=False)
    h = script.train_classifier(clf, images, labels, config)
    assert sum(h["loss"][-10:]) / 10 < 0.6 * sum(h["loss"][:10]) / 10
    assert accuracy(clf, images, labels) > 0.5  # chance is 0.1
    with pytest.raises(ValueError, match="512 images but 511 labels"):
        script.train_classifier(clf, images, labels[:-1], config)
