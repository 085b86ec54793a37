"""kl_distillation and the output losses against float64 references written independently here."""
import math
import zlib

import pytest
import torch

import kdlab as kd
from kdlab.losses import kl_distillation


def reference_kl(s: torch.Tensor, t: torch.Tensor, T: float, direction: str) -> torch.Tensor:
    """Per-position T^2 * KL in float64 with explicit max-shifted softmax, classes on dim 1."""
    s, t = s.double() / T, t.double() / T
    def log_softmax(x):
        m = x.max(1, keepdim=True).values
        return x - m - torch.log(torch.exp(x - m).sum(1, keepdim=True))
    ls, lt = log_softmax(s), log_softmax(t)
    a, b = (lt, ls) if direction == "forward" else (ls, lt)
    return T * T * (torch.exp(a) * (a - b)).sum(1)


SHAPES = [(6, 2), (4, 10), (3, 256), (2, 10, 5, 7), (2, 256, 3, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_values_and_gradients_match_float64_reference(shape, T, direction):
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, T, direction)).encode()))
    s = (3 * torch.randn(shape, generator=g)).requires_grad_()
    t = 3 * torch.randn(shape, generator=g)
    per_pos = kl_distillation(s, t, T, direction, reduction="none")
    ref = reference_kl(s.detach(), t, T, direction)
    assert per_pos.shape == ref.shape == (shape[0], *shape[2:])
    assert torch.allclose(per_pos.double(), ref, rtol=1e-4, atol=1e-5)
    loss = kl_distillation(s, t, T, direction)  # mean
    assert torch.allclose(loss.double(), ref.mean(), rtol=1e-4, atol=1e-6)
    assert torch.allclose(kl_distillation(s, t, T, direction, "sum").double(), ref.sum(), rtol=1e-4, atol=1e-5)
    loss.backward()
    s64 = s.detach().double().requires_grad_()
    reference_kl(s64, t, T, direction).mean().backward()
    assert torch.allclose(s.grad.double(), s64.grad, rtol=1e-3, atol=1e-6)


def test_forward_gradient_closed_form():
    """d/dz_S of T^2 KL(p || q) = T (q - p), i.e. (q - p) / T before the T^2 scaling."""
    s = torch.randn(5, 7, dtype=torch.float32, requires_grad=True)
    t = torch.randn(5, 7)
    T = 3.0
    kl_distillation(s, t, T, reduction="sum").backward()
    q, p = torch.softmax(s.detach() / T, 1), torch.softmax(t / T, 1)
    assert torch.allclose(s.grad, T * (q - p), atol=1e-5)


def test_identical_logits_give_zero_loss_and_gradient():
    s = torch.randn(3, 10, 4, 4, requires_grad=True)
    for direction in ("forward", "reverse"):
        loss = kl_distillation(s, s.detach().clone(), 2.0, direction)
        loss.backward()
        assert abs(loss.item()) < 1e-6 and s.grad.abs().max() < 1e-6
        s.grad = None


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_extreme_logits_are_finite_and_correct(direction):
    s = torch.tensor([[1e4, -1e4, 0.0], [-3e4, 3e4, 2e4]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0], [3e4, -3e4, 2e4]])
    loss = kl_distillation(s, t, 1.0, direction, reduction="none")
    ref = reference_kl(s.detach(), t, 1.0, direction)
    assert torch.isfinite(loss).all() and torch.allclose(loss.double(), ref, rtol=1e-5)
    loss.sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    s, t = torch.randn(4, 256, 3, 3).to(dtype), torch.randn(4, 256, 3, 3).to(dtype)
    out = kl_distillation(s, t, 2.0)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), reference_kl(s.double(), t.double(), 2.0, "forward").mean(), rtol=1e-5)


def test_large_temperature_approaches_centred_logit_matching():
    """T^2 KL -> (1 / 2K) * sum_k (centred z_S - centred z_T)^2 as T -> infinity (Hinton et al.)."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, dtype=torch.float64, generator=g), torch.randn(8, 10, dtype=torch.float64, generator=g)
    centred = lambda z: z - z.mean(1, keepdim=True)
    limit = (((centred(s) - centred(t)) ** 2).sum(1) / (2 * 10)).mean().item()
    errors = [abs(kl_distillation(s, t, T).item() - limit) / limit for T in (100.0, 1000.0)]
    assert errors[0] < 1e-2 and errors[1] < 1e-3  # the gap closes like 1 / T


def test_kl_is_not_symmetric_and_is_non_negative():
    s, t = torch.randn(64, 5) * 2, torch.randn(64, 5) * 2
    f, r = kl_distillation(s, t, reduction="none"), kl_distillation(s, t, direction="reverse", reduction="none")
    assert (f >= -1e-6).all() and (r >= -1e-6).all() and not torch.allclose(f, r)


def test_bad_arguments_raise_clear_errors():
    s = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"shapes differ: student \[2, 5\], teacher \[2, 6\]"):
        kl_distillation(s, torch.randn(2, 6))
    for T in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="temperature"):
            kl_distillation(s, s, T)
    with pytest.raises(ValueError, match="direction='backward'"):
        kl_distillation(s, s, direction="backward")
    with pytest.raises(ValueError, match="reduction='avg'"):
        kl_distillation(s, s, reduction="avg")
    with pytest.raises(ValueError, match="K >= 2"):
        kl_distillation(torch.randn(3, 1), torch.randn(3, 1))


def test_output_losses():
    s = torch.tensor([[0.0, 1.0], [2.0, -1.0]]).view(1, 1, 2, 2).requires_grad_()
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    assert math.isclose(kd.losses.output_distillation(s, t, "mse").item(), (1 + 0 + 4 + 4) / 4)
    assert math.isclose(kd.losses.output_distillation(s, t, "l1").item(), (1 + 0 + 2 + 2) / 4)
    with pytest.raises(ValueError, match="kind='l2'"):
        kd.losses.output_distillation(s, t, "l2")
    logits = torch.tensor([0.0, 2.0])
    adv = kd.losses.generator_adversarial(logits).item()
    assert math.isclose(adv, -(math.log(0.5) + math.log(1 / (1 + math.exp(-2)))) / 2, rel_tol=1e-6)
    joint = kd.losses.joint_distillation(s, t, logits, adversarial_weight=0.5).item()
    assert math.isclose(joint, 9 / 4 + 0.5 * adv, rel_tol=1e-6)
    d = kd.losses.discriminator_loss(torch.tensor([0.0]), torch.tensor([0.0])).item()
    assert math.isclose(d, 2 * math.log(2), rel_tol=1e-6)


def test_masked_classes_contribute_nothing():
    """A class the teacher gives probability 0 (logit -inf) adds 0 log 0 = 0 to the forward KL."""
    t = torch.tensor([[0.0, 1.0, -float("inf")]])
    s = torch.tensor([[0.5, 0.2, 3.0]])
    ref = reference_kl(s[:, :2], t[:, :2], 1.0, "forward")  # the third class removed by hand...
    q = torch.softmax(s.double(), 1)
    p = torch.softmax(t[:, :2].double(), 1)
    expected = (p * (p.log() - q[:, :2].log())).sum()
    out = kl_distillation(s, t)
    assert torch.isfinite(out) and abs(out.item() - expected.item()) < 1e-6
    assert ref.shape == (1,)
